"""Which device and how many threads each worker gets.

With GPUs, worker i sees only GPU i mod n (CUDA_VISIBLE_DEVICES), with memory growth on so that
workers sharing a GPU do not each reserve all of it. On CPU the cores are divided between the
workers: two TensorFlow processes each using every core only fight over them.
The plan is a pure function of (jobs, gpus, cores) so CPU tests can check the GPU path.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def visible_gpus() -> list[str]:
    """GPU indices this machine offers, without importing a framework (nvidia-smi / env)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def plan_workers(jobs: int, gpus: list[str], cores: int) -> list[dict[str, str]]:
    """Environment variables for each of ``jobs`` workers."""
    plans = []
    threads = max(1, cores // max(jobs, 1))
    for i in range(jobs):
        env = {
            "OMP_NUM_THREADS": str(threads),
            "TF_NUM_INTRAOP_THREADS": str(threads),
            "TF_NUM_INTEROP_THREADS": "1" if threads == 1 else "2",
            "BENCH_WORKER_THREADS": str(threads),
        }
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
            # Several workers on one GPU must not each preallocate most of its memory (JAX).
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        plans.append(env)
    return plans


def apply_thread_limits() -> None:
    """Inside a worker, after the environment is set and before any op runs."""
    threads = os.environ.get("BENCH_WORKER_THREADS")
    if not threads:
        return
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1 if threads == "1" else 2)
        except RuntimeError:  # already initialised: the environment variables took effect
            pass
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    elif backend == "torch":
        import torch

        torch.set_num_threads(int(threads))


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def apply_precision(policy: str) -> None:
    """Mixed precision for GPUs (float16 with loss scaling; bfloat16 on TPUs/recent GPUs).

    The classifier's last Dense layer is float32 whatever the policy, so probabilities and the
    loss stay in float32.
    """
    import keras

    keras.mixed_precision.set_global_policy(policy)
