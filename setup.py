"""vsr1_jax: VideoSearch-R1 in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="vsr1_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of VideoSearch-R1 (iterative video retrieval and reasoning with soft query refinement)",
    packages=find_packages(include=["vsr1_jax", "vsr1_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.4",
        "transformers>=5.17",
        "safetensors>=0.8",
        "numpy>=2.0",
        "faiss-cpu>=1.15",
        "grain>=0.2.18",
        "ml_collections>=1.1",
        "tensorflow-datasets>=4.9.10",
        "absl-py",
        "tokenizers",
        "pillow",
        # video decoding for the build (vsr1_jax/data/build/frames.py: the original's extract_npy.py decodes with
        # PyAV; abi3 wheels with FFmpeg inside for Python >= 3.11)
        "av>=14",
        "tqdm",
        # training logs (vsr1_jax/train/loop.py): tensorboard event files without TensorFlow
        "tensorboardX>=2.6",
        "matplotlib",
    ],
    extras_require={
        # torch is pinned: on the CPU machine only this build exists as a local CPU wheel.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0"],
    },
)
