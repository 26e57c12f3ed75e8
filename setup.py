"""vlm3r_jax: a JAX/Flax reimplementation of VLM-3R (arXiv 2505.20279)."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.4",
    "grain>=0.2.18",
    "ml-collections>=1.1.0",
    "einops>=0.8",
    "safetensors>=0.4",
    "tokenizers>=0.19",
    "av>=12",
    "numpy>=1.26",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "pillow>=10",
    "absl-py>=2",
    # Hub repo ids as checkpoint paths (vlm3r_jax/convert/hub.py); 2.x's errors and HTTP client
    "huggingface_hub>=2,<3",
    # TensorBoard event files without TensorFlow (vlm3r_jax/train/metrics.py); ~90 kB, needs protobuf
    "tensorboardX>=2.6",
]

EXTRAS = {
    # torch is pinned exactly: an unpinned requirement pulls a multi-GB CUDA build.
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "ruff>=0.6",
        "transformers>=4.45",
        "torch==2.13.0",
        # executes notebooks/quickstart.ipynb in tests/test_notebook.py
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        # tests/test_storage_gcs.py: a local GCS stand-in (skipped without these two)
        "gcsfs>=2024.2",
        "gcp-storage-emulator>=2024.8",
    ],
    # gs:// work dirs, eval outputs and geometry caches (etils.epath opens gs:// through gcsfs;
    # Orbax checkpoints reach gs:// through tensorstore without it)
    "gcs": ["gcsfs>=2024.2"],
    # running the notebooks interactively
    "notebook": ["jupyterlab>=4"],
    # TFDS builders (data_pipeline/tfds_builders.py): ~25 s / ~210 MB to install; no TensorFlow needed.
    "tfds": ["tensorflow-datasets>=4.9.6", "importlib_resources>=6"],
    # the TensorBoard viewer (`tensorboard --logdir WORKDIR`); writing events needs only tensorboardX
    "tensorboard": ["tensorboard>=2.16"],
    # AOT-compile for TPU topologies on a CPU host (launch/aot_compile.py); the version jax 0.10.2 pins.
    "tpu-aot": ["libtpu==0.0.42.*"],
    "gpu": ["jax[cuda12]>=0.10.2"],
    "tpu": ["jax[tpu]>=0.10.2"],
}

setup(
    name="vlm3r_jax",
    version="0.1.0",
    description="VLM-3R (vision-language model with instruction-aligned 3D reconstruction) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["vlm3r_jax*", "data_pipeline*", "configs*", "launch*"]),
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
