"""The serving manifests (`kiln.json`) and the graph tensor names they imply.

Export writes one manifest per model-repository entry; the gateway, the Triton python model
and the tests read it back through these dataclasses only, so a field cannot be spelled two
ways. The text manifest declares the *per-slot state* of every layer instead of assuming a KV
cache: an attention layer keeps keys and values that grow with the sequence, a recurrent layer
(Mamba) keeps tensors of a fixed size. Runners allocate whatever it lists, and the engine never
sees a shape.

Graph tensor names follow from the state: a state tensor `key.3` enters every graph as
`past_key.3`; the standard (traced) graph returns only the new tokens' part as `new_key.3`,
a graph that updates the whole buffer returns it as `present_key.3`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

from contracts.versions import ContractError, check_version

MANIFEST_FILE = "kiln.json"
MANIFEST_VERSION = 2  # 1: the unversioned layout before per-slot state and EOS lists

TEXT_KIND = "text-generation"
VISION_KIND = "image-classification"

# Graph contracts (what a variant's ONNX file takes and returns; see each builder's docstring).
STANDARD = "standard"  # export/onnx_export.py: past in, new tokens' K/V out
GQA = "gqa"  # export/fused_graph.py: GroupQueryAttention, cache updated in place
HYBRID = "hybrid"  # export/hybrid_graph.py: Mamba/attention layers, recurrent state in, present_* out
GRAPH_CONTRACTS = (STANDARD, GQA, HYBRID)

# Kinds of per-slot state.
ATTENTION_KV = "attention_kv"  # grows with the sequence along the POSITIONS axis
RECURRENT = "recurrent"  # a fixed size per slot, whatever the sequence length
STATE_KINDS = (ATTENTION_KV, RECURRENT)
POSITIONS = "positions"  # the axis of a state tensor that has one entry per position

Shape = tuple[int | str, ...]


def past_name(tensor: str) -> str:
    return f"past_{tensor}"


def new_name(tensor: str) -> str:
    return f"new_{tensor}"


def present_name(tensor: str) -> str:
    return f"present_{tensor}"


@dataclass(frozen=True)
class LayerState:
    """What one layer keeps per slot between calls: named tensors and their per-slot shapes."""

    kind: str
    tensors: dict[str, Shape]

    @property
    def grows(self) -> bool:
        return any(POSITIONS in shape for shape in self.tensors.values())

    def slot_shape(self, tensor: str, positions: int) -> tuple[int, ...]:
        """The tensor's shape for one slot, with the positions axis `positions` long."""
        return tuple(positions if d == POSITIONS else int(d) for d in self.tensors[tensor])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tensors": {k: list(v) for k, v in self.tensors.items()}}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> LayerState:
        kind = d.get("kind")
        if kind not in STATE_KINDS:
            raise ContractError(f"{source}: unknown state kind {kind!r} (this Kiln knows {list(STATE_KINDS)})")
        tensors: dict[str, Shape] = {}
        for name, shape in dict(d.get("tensors", {})).items():
            if not all(isinstance(x, int) or x == POSITIONS for x in shape):
                raise ContractError(f"{source}: state tensor {name!r} has a bad shape {shape!r}")
            tensors[str(name)] = tuple(shape)
        if not tensors:
            raise ContractError(f"{source}: a {kind} state entry lists no tensors")
        return cls(kind, tensors)


def attention_state(num_layers: int, num_kv_heads: int, head_dim: int) -> tuple[LayerState, ...]:
    """A decoder whose every layer keeps keys and values: [kv_heads, positions, head_dim] each."""
    shape: Shape = (num_kv_heads, POSITIONS, head_dim)
    return tuple(LayerState(ATTENTION_KV, {f"key.{i}": shape, f"value.{i}": shape}) for i in range(num_layers))


@dataclass(frozen=True)
class GraphFile:
    """One exported graph of a text model: which variant, where, and which contract it follows."""

    variant: str
    path: Path
    contract: str


class EntryManifest:
    """What every `kiln.json` shares: a version and a kind, a directory it was read from."""

    kind: ClassVar[str]
    name: str
    root: Path | None

    def path(self, relative: str) -> Path:
        if self.root is None:
            raise ContractError(f"{self.name}: the manifest was not read from a directory")
        return self.root / relative

    def body(self) -> dict:
        raise NotImplementedError

    @classmethod
    def parse(cls, data: dict) -> dict:
        """The constructor's keyword arguments from a manifest's fields (KeyError: one is missing)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"manifest_version": MANIFEST_VERSION, "kind": self.kind, "name": self.name, **self.body()}

    @classmethod
    def from_dict(cls, data: dict, source: str = MANIFEST_FILE, root: Path | None = None) -> Self:
        check_version(data, "manifest_version", MANIFEST_VERSION, source)
        if data.get("kind") != cls.kind:
            raise ContractError(f"{source}: kind {data.get('kind')!r} is not {cls.kind!r}")
        try:
            return cls(name=str(data["name"]), **cls.parse(data), root=root)  # type: ignore[call-arg]
        except KeyError as exc:
            raise ContractError(f"{source}: required field {exc.args[0]!r} is missing") from exc

    def write(self, entry: Path) -> Path:
        return write_json(entry / MANIFEST_FILE, self.to_dict())

    @classmethod
    def read(cls, entry: Path) -> Self:
        return cls.from_dict(read_json(entry / MANIFEST_FILE), str(entry / MANIFEST_FILE), root=entry)


@dataclass(frozen=True)
class TextManifest(EntryManifest):
    """`kiln.json` of a text-generation entry."""

    name: str
    files: dict[str, str]  # variant -> path relative to the entry
    graphs: dict[str, str]  # variant -> graph contract
    state: tuple[LayerState, ...]
    vocab_size: int
    max_position_embeddings: int
    bos_token_id: int
    eos_token_ids: tuple[int, ...]  # generation stops on any of them
    pad_token_id: int = 0
    add_bos: bool = True
    tokenizer: str = "tokenizer.json"
    generation_defaults: dict = field(default_factory=dict)
    chat_template: str | None = None  # the entry's Jinja chat template file (the checkpoint's own)
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token...: template variables
    architecture: dict = field(default_factory=dict)  # informational: layers, heads, hidden size...
    triton_model: str | None = None  # the decoupled Triton entry serving this model, when exported
    # variant -> the same contract's graph traced for one new token per row (S = 1), when exported
    # (hybrid: the prefill graph loops over S, this one is a single step)
    decode_files: dict[str, str] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False)  # the entry directory it was read from

    kind: ClassVar[str] = TEXT_KIND

    def __post_init__(self) -> None:
        unknown = {v: c for v, c in self.graphs.items() if c not in GRAPH_CONTRACTS}
        if unknown:
            raise ContractError(f"{self.name}: unknown graph contract(s) {unknown} (known: {list(GRAPH_CONTRACTS)})")
        if not self.eos_token_ids:
            raise ContractError(f"{self.name}: the manifest lists no end-of-sequence token")

    @property
    def num_layers(self) -> int:
        return len(self.state)

    def graph(self, variant: str) -> GraphFile:
        """The variant's graph, or fp32's when that variant was not exported."""
        chosen = variant if variant in self.files else "fp32"
        if chosen not in self.files:
            raise ContractError(f"{self.name}: neither variant {variant!r} nor fp32 was exported")
        return GraphFile(chosen, self.path(self.files[chosen]), self.graphs.get(chosen, STANDARD))

    def body(self) -> dict:
        return {
            "files": dict(self.files),
            "graphs": dict(self.graphs),
            "state": [layer.to_dict() for layer in self.state],
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_ids": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
            "add_bos": self.add_bos,
            "tokenizer": self.tokenizer,
            "generation_defaults": dict(self.generation_defaults),
            "chat_template": self.chat_template,
            "special_tokens": dict(self.special_tokens),
            "architecture": dict(self.architecture),
            **({"triton_model": self.triton_model} if self.triton_model else {}),
            **({"decode_files": dict(self.decode_files)} if self.decode_files else {}),
        }

    @classmethod
    def parse(cls, data: dict) -> dict:
        return {
            "files": {str(k): str(v) for k, v in data["files"].items()},
            "graphs": {str(k): str(v) for k, v in data.get("graphs", {}).items()},
            "state": tuple(LayerState.from_dict(d, str(data.get("name"))) for d in data["state"]),
            "vocab_size": int(data["vocab_size"]),
            "max_position_embeddings": int(data["max_position_embeddings"]),
            "bos_token_id": int(data["bos_token_id"]),
            "eos_token_ids": tuple(int(x) for x in data["eos_token_ids"]),
            "pad_token_id": int(data.get("pad_token_id", 0)),
            "add_bos": bool(data.get("add_bos", True)),
            "tokenizer": str(data.get("tokenizer", "tokenizer.json")),
            "generation_defaults": dict(data.get("generation_defaults", {})),
            "chat_template": data.get("chat_template"),
            "special_tokens": {str(k): str(v) for k, v in data.get("special_tokens", {}).items()},
            "architecture": dict(data.get("architecture", {})),
            "triton_model": data.get("triton_model"),
            "decode_files": {str(k): str(v) for k, v in data.get("decode_files", {}).items()},
        }


@dataclass(frozen=True)
class VisionManifest(EntryManifest):
    """`kiln.json` of an image-classification entry (the pixels' contract is `preprocess`)."""

    name: str
    files: dict[str, str]
    num_classes: int
    preprocess: str = "preprocess.json"
    calibration: str | None = None
    arch: str = ""
    triton_model: str | None = None
    views: str | None = None  # the views graph (image -> every view, contracts/view_plan.py); Pillow when absent
    root: Path | None = field(default=None, compare=False)

    kind: ClassVar[str] = VISION_KIND

    def body(self) -> dict:
        optional = {"calibration": self.calibration, "triton_model": self.triton_model, "views": self.views}
        return {
            "files": dict(self.files),
            "num_classes": self.num_classes,
            "preprocess": self.preprocess,
            "arch": self.arch,
            **{k: v for k, v in optional.items() if v},
        }

    @classmethod
    def parse(cls, data: dict) -> dict:
        return {
            "files": {str(k): str(v) for k, v in data["files"].items()},
            "num_classes": int(data["num_classes"]),
            "preprocess": str(data.get("preprocess", "preprocess.json")),
            "calibration": data.get("calibration"),
            "arch": str(data.get("arch", "")),
            "triton_model": data.get("triton_model"),
            "views": data.get("views"),
        }


Manifest = TextManifest | VisionManifest


def read_manifest(entry: Path) -> Manifest:
    """The entry's manifest, by its `kind`; ContractError for a kind or version this Kiln does not serve."""
    source = entry / MANIFEST_FILE
    data = read_json(source)
    kind = data.get("kind")
    if kind == TEXT_KIND:
        return TextManifest.from_dict(data, str(source), root=entry)
    if kind == VISION_KIND:
        return VisionManifest.from_dict(data, str(source), root=entry)
    raise ContractError(f"{source}: unsupported kind {kind!r} (this Kiln serves {TEXT_KIND!r} and {VISION_KIND!r})")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ContractError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ContractError(f"{path}: expected a JSON object")
    return data


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path
