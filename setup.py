"""vlm3r_jax: a JAX/Flax reimplementation of VLM-3R (arXiv 2505.20279).

Every requirement has an upper bound: the next minor release for 0.x projects (their minors break
APIs: Flax NNX, Grain, Optax, Orbax), the next major otherwise. ``pip install -e .`` is what the demo
needs (``launch/demo.sh``); ``.[test]`` adds torch, transformers and Jupyter for the parity tests
and the notebook test, and lmms-eval for the harness tests (``launch/test.sh``).
"""

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.4,<0.13",
    "grain>=0.2.18,<0.3",
    "ml-collections>=1.1.0,<2",
    "ml-dtypes>=0.5,<0.8",  # bfloat16 tensors in the safetensors / torch readers and writers
    "einops>=0.8,<0.9",
    "safetensors>=0.4,<0.9",
    "tokenizers>=0.19,<0.24",
    "av>=12,<19",
    "numpy>=1.26,<3",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
    "pillow>=10,<14",
    "absl-py>=2,<3",
    # local paths and gs:// URIs behind one API (vlm3r_jax/storage.py)
    "etils[epath]>=1.7,<2",
    # Hub repo ids as checkpoint paths (vlm3r_jax/convert/hub.py); 2.x's errors and HTTP client
    "huggingface_hub>=2,<3",
    # TensorBoard event files without TensorFlow (vlm3r_jax/train/metrics.py); ~90 kB, needs protobuf
    "tensorboardX>=2.6,<3",
]

EXTRAS = {
    # torch is pinned exactly: an unpinned requirement pulls a multi-GB CUDA build.
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "ruff>=0.6,<0.18",
        "transformers>=4.45,<6",
        "torch==2.13.0",
        # executes notebooks/quickstart.ipynb in tests/test_notebook.py
        "nbclient>=0.10,<0.12",
        "nbformat>=5.10,<6",
        "ipykernel>=6.29,<8",
        # tests/test_storage_gcs.py: a local GCS stand-in (skipped without these two)
        "gcsfs>=2024.2,<2027",
        "gcp-storage-emulator>=2024.8,<2027",
        # tests/test_lmms_eval_adapter.py and tests/test_vsibench_rules.py run lmms-eval's own CLI and
        # VSI-Bench task code. ~75 more packages (accelerate, datasets, wandb, ...); it caps av<16
        # (within our av pin) and, through wandb, protobuf<7.
        "lmms-eval==0.7.*",
        "filelock>=3.16,<4",  # lmms-eval 0.7.3 patches filelock._api.FileLockMeta, gone in filelock 4
    ],
    # gs:// work dirs, eval outputs and geometry caches (etils.epath opens gs:// through gcsfs;
    # Orbax checkpoints reach gs:// through tensorstore without it)
    "gcs": ["gcsfs>=2024.2,<2027"],
    # benchmark records stored as .parquet (vlm3r_jax/eval/records.py); .jsonl/.json need nothing
    "parquet": ["pyarrow>=14,<27"],
    # running the notebooks interactively
    "notebook": ["jupyterlab>=4,<5"],
    # TFDS builders (data_pipeline/tfds_builders.py): ~25 s / ~210 MB to install; no TensorFlow needed.
    "tfds": ["tensorflow-datasets>=4.9.6,<5", "importlib_resources>=6,<8"],
    # the TensorBoard viewer (`tensorboard --logdir WORKDIR`); writing events needs only tensorboardX
    "tensorboard": ["tensorboard>=2.16,<3"],
    # AOT-compile for TPU topologies on a CPU host (launch/aot_compile.py); the version jax 0.10.2 pins.
    "tpu-aot": ["libtpu==0.0.42.*"],
    "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
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
    # `python -m lmms_eval --model vlm3r_jax ...` finds the adapter through this (vlm3r_jax/lmms_eval/)
    entry_points={"lmms_eval.models": ["vlm3r_jax = vlm3r_jax.lmms_eval.manifest:MANIFEST"]},
)
