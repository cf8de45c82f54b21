from setuptools import find_packages, setup

setup(
    name="ts-guided-diffusion",
    version="0.1.0",
    description="ADM (guided-diffusion) with the Time-Shift sampler (TS-DPM, ICLR 2024)",
    packages=find_packages(include=["guided_diffusion", "guided_diffusion.*", "evaluations", "evaluations.*"]),
    package_data={"guided_diffusion": ["assets/*"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "numpy",
        "Pillow",
        "tqdm",
        "scipy",
    ],
    extras_require={
        "mpi": ["mpi4py"],
        "plot": ["matplotlib"],
        "lsun": ["lmdb"],
        "diffusers": ["diffusers", "safetensors"],
        "cloud": ["blobfile"],
    },
)
