"""Using a winner: export with a verified model card, prediction on new images, and explanations
(Grad-CAM, LIME, occlusion)."""
