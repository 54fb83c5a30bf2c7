"""Models by name: Meta's official ViT-B/L/H checkpoints, micro-sam's domain models and MedSAM (``zoo``), the
project's bundled small model, or any SAM state dict.

Named checkpoints are downloaded on first use into the user cache folder (``SAMTUNE_CACHE_DIR`` overrides it) and
verified by the checksum their project publishes (sha256 for Meta's, xxh128 for micro-sam's); a file the user already
has is used through ``checkpoint=`` or ``SAMTUNE_CHECKPOINT_<NAME>``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from ..errors import SamtuneError
from . import zoo
from .architecture import (
    SamArchitecture,
    architecture_from_state_dict,
    build_sam,
)

MODEL_FILE_FORMAT = "napari-samtune-model"
BUNDLED_NAME = "samtune_small"
# Models shipped inside the package: the default, and earlier versions kept loadable by name for reproducibility.
BUNDLED_NAMES = (BUNDLED_NAME, "samtune_small_v1")


class ModelError(SamtuneError, RuntimeError):
    """A model that cannot be loaded; the message says which file and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a named model's weights come from: a URL with its checksum, or a file shipped in the package.

    ``checksum`` ("xxh128:<hex>") replaces ``sha256`` for publishers that give another hash (micro-sam); a source
    with neither is not verified. ``page`` says where to download it by hand when there is no ``url``.
    """

    name: str
    filename: str
    sha256: str
    url: str | None = None
    packaged: bool = False
    checksum: str = ""
    purpose: str = ""
    page: str = ""

    @property
    def known_hash(self) -> str | None:
        """The checksum in pooch's "algorithm:hex" form, or None when the publisher gives none."""
        return self.checksum or (f"sha256:{self.sha256}" if self.sha256 else None)


_OFFICIAL_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
MODEL_SOURCES: dict[str, ModelSource] = {
    "vit_b": ModelSource(
        "vit_b",
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        _OFFICIAL_URL + "sam_vit_b_01ec64.pth",
    ),
    "vit_l": ModelSource(
        "vit_l",
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        _OFFICIAL_URL + "sam_vit_l_0b3195.pth",
    ),
    "vit_h": ModelSource(
        "vit_h",
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        _OFFICIAL_URL + "sam_vit_h_4b8939.pth",
    ),
    **{
        name: ModelSource(name, f"{name}.pt", "", url, checksum=checksum, purpose=purpose)
        for name, (url, checksum, purpose) in zoo.MICRO_SAM_MODELS.items()
    },
    zoo.MEDSAM_NAME: ModelSource(
        zoo.MEDSAM_NAME, "medsam_vit_b.pth", "", None, purpose=zoo.MEDSAM_PURPOSE, page=zoo.MEDSAM_PAGE
    ),
}


@dataclass
class SamModel:
    """A loaded SAM model and what identifies it.

    ``encoder_id`` names the exact image-encoder weights (embeddings computed with one encoder are never reused for
    another); anything that changes the encoder (LoRA training, an adapter) must give it a new value.
    ``prompt_embeddings`` ``(K, T, C)``: learned prompts for prompt-free segmentation of ``classes`` (K classes),
    set by BLO prompt learning; None for a model that needs user prompts.
    """

    sam: Sam
    name: str
    architecture: SamArchitecture
    weights_sha256: str
    device: torch.device
    encoder_id: str = ""
    metadata: dict = field(default_factory=dict)
    prompt_embeddings: torch.Tensor | None = None
    classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.encoder_id:
            self.encoder_id = f"{self.name}:{self.weights_sha256[:16]}"

    @property
    def img_size(self) -> int:
        return self.architecture.img_size

    def copy(self) -> SamModel:
        """An independent copy (weights included): train this one and the original stays as it was."""
        import copy

        return SamModel(
            sam=copy.deepcopy(self.sam),
            name=self.name,
            architecture=self.architecture,
            weights_sha256=self.weights_sha256,
            device=self.device,
            encoder_id=self.encoder_id,
            metadata=dict(self.metadata),
            prompt_embeddings=None if self.prompt_embeddings is None else self.prompt_embeddings.clone(),
            classes=self.classes,
        )


def default_device(preferred: str | torch.device | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU; ``preferred`` or ``SAMTUNE_DEVICE`` overrides the choice.

    Raises ``ModelError`` for a device name PyTorch does not know or a device this machine does not have.
    """
    choice = preferred or os.environ.get("SAMTUNE_DEVICE")
    if choice:
        return check_device(choice, "device" if preferred else "SAMTUNE_DEVICE")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """The torch device types usable here: "cpu", then "cuda" and "mps" where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if _mps_available():
        devices.append("mps")
    return devices


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def check_device(choice: str | torch.device, setting: str = "device") -> torch.device:
    """``choice`` as a ``torch.device`` this machine has; ``setting`` names where it came from in the error."""
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"unknown {setting} {str(choice)!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(f"{setting} {str(choice)!r} asks for a CUDA GPU but PyTorch sees none: use cpu")
        if device.index is not None and device.index >= count:
            raise ModelError(f"{setting} {str(choice)!r} does not exist: this machine has {count} CUDA GPU(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelError(f"{setting} {str(choice)!r} asks for Apple's MPS but it is not available here: use cpu")
    elif device.type != "cpu":
        raise ModelError(f"{setting} {str(choice)!r} is not supported: use cpu, cuda, cuda:N or mps")
    return device


def cache_dir() -> Path:
    """Folder for downloaded checkpoints and embedding caches (``SAMTUNE_CACHE_DIR`` overrides it)."""
    env = os.environ.get("SAMTUNE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-samtune"))


def available_models() -> list[str]:
    """Names accepted by ``load_model`` besides a checkpoint path."""
    return [*BUNDLED_NAMES, *MODEL_SOURCES]


def model_purpose(name: str) -> str:
    """One line on what the named model is for (empty for an unknown name)."""
    return zoo.PURPOSES.get(name, "")


def file_checksum(path: str | os.PathLike, known_hash: str) -> str:
    """The checksum of a file in the form of ``known_hash`` ("sha256:<hex>", "xxh128:<hex>" or a bare sha256)."""
    algorithm = known_hash.split(":")[0] if ":" in known_hash else "sha256"
    if algorithm == "sha256":
        return f"sha256:{file_sha256(path)}" if ":" in known_hash else file_sha256(path)
    import pooch

    return f"{algorithm}:{pooch.file_hash(str(path), alg=algorithm)}"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_checkpoint(source: ModelSource, folder: Path | None = None) -> Path:
    """Return a local, checksum-verified copy of ``source``, downloading it if needed.

    A download whose checksum does not match raises ``ModelError`` and leaves no file behind.
    """
    import pooch

    folder = Path(folder) if folder is not None else cache_dir() / "checkpoints"
    env = f"SAMTUNE_CHECKPOINT_{source.name.upper()}"
    if source.url is None:
        where = f" from {source.page}" if source.page else ""
        raise ModelError(
            f"model {source.name!r} cannot be downloaded automatically (its publisher gives no direct address or "
            f"checksum): download {source.filename}{where}, then pass checkpoint=PATH, set {env}=PATH, or put it "
            f"at {folder / source.filename}"
        )
    expected = source.known_hash or "no checksum"
    try:
        path = pooch.retrieve(
            source.url,
            known_hash=source.known_hash,
            fname=source.filename,
            path=folder,
            progressbar=False,
        )
    except ValueError as error:  # pooch's checksum mismatch
        raise ModelError(
            f"the download of {source.filename} from {source.url} does not have the expected "
            f"{expected.replace(':', ' ')} (the file was deleted). Try again, or download it yourself and pass "
            f"checkpoint=PATH. Details: {error}"
        ) from error
    except Exception as error:  # offline, HTTP error, DNS…
        kept = folder / source.filename
        if kept.is_file():  # pooch found a file whose checksum differs and could not fetch a good one
            raise ModelError(
                f"the cached {source.name} checkpoint {kept} is corrupt or incomplete (its checksum is not "
                f"{expected}) and a fresh copy could not be downloaded ({error}). Delete it and try again "
                f"online, or pass checkpoint=PATH / set {env}=PATH to a good copy."
            ) from error
        raise ModelError(
            f"could not download the {source.name} checkpoint {source.filename} from {source.url} ({error}). "
            f"If this machine is offline, copy the file from a machine that has it and pass checkpoint=PATH, set "
            f"{env}=PATH, or put it at {folder / source.filename}."
        ) from error
    return Path(path)


def load_model(
    name: str = BUNDLED_NAME,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    verify: bool = True,
) -> SamModel:
    """Load a SAM model by name and/or checkpoint file, in eval mode on ``device`` (default: ``default_device``).

    name: ``"samtune_small"`` (bundled, offline; ``"samtune_small_v1"`` its first version), ``"vit_b"``,
    ``"vit_l"``, ``"vit_h"`` (official), micro-sam's
    ``"vit_b_lm"``, ``"vit_b_em_organelles"``… and ``"medsam_vit_b"`` (see ``zoo``; downloaded on first use, except
    MedSAM), or ``"custom"`` with ``checkpoint`` = any SAM state dict (architecture detected; micro-sam's and
    MedSAM's wrapped layouts are unwrapped).
    checkpoint: a local file to use instead of downloading; for named models it is checked against the published
    checksum when ``verify`` (a fine-tuned full model saved under such a name can pass ``verify=False``).
    """
    device = default_device(device)
    if name in BUNDLED_NAMES and checkpoint is None:
        from .bundled import bundled_model_path, bundled_sha256

        checkpoint = bundled_model_path(name)
        expected = bundled_sha256(name)
    elif name in MODEL_SOURCES:
        source = MODEL_SOURCES[name]
        checkpoint = checkpoint or os.environ.get(f"SAMTUNE_CHECKPOINT_{name.upper()}")
        if checkpoint is None:
            checkpoint = fetch_checkpoint(source)
            verify = False  # fetch_checkpoint verified it
        expected = source.known_hash if verify else None
    elif name in ("custom", BUNDLED_NAME):
        if checkpoint is None:
            raise ModelError("model 'custom' needs checkpoint=PATH to a SAM state dict in the official layout")
        expected = None
    else:
        raise ModelError(f"unknown model {name!r}; choose one of {available_models()} or 'custom' with a checkpoint")

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelError(f"checkpoint file {path} does not exist (model {name!r}); check the path")
    sha = file_sha256(path)
    actual = (sha if ":" not in expected else file_checksum(path, expected)) if expected is not None else None
    if expected is not None and actual != expected:
        kind = "sha256" if ":" not in expected else expected.split(":")[0]
        raise ModelError(
            f"checkpoint {path} has {kind} {actual.split(':')[-1]} but model {name!r} expects "
            f"{expected.split(':')[-1]}: the file is corrupt, incomplete or a different model. Download it again, "
            "or load it as name='custom'."
        )
    sam, arch, metadata = _build_from_file(path)
    zoo.apply_pixel_statistics(sam, name)
    return SamModel(
        sam=sam.to(device),
        name=name,
        architecture=arch,
        weights_sha256=sha,
        device=device,
        metadata=metadata,
    )


def _build_from_file(path: Path) -> tuple[Sam, SamArchitecture, dict]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(f"cannot read checkpoint {path}: {error}. Is it a PyTorch SAM checkpoint?") from error
    if not isinstance(payload, dict):
        raise ModelError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    if payload.get("format") == MODEL_FILE_FORMAT:
        arch = SamArchitecture.from_dict(payload["architecture"])
        state = payload["state_dict"]
        metadata = dict(payload.get("metadata", {}))
    else:
        try:  # micro-sam, MedSAM and other training scripts wrap the official layout (see zoo.sam_state_dict)
            state, metadata = zoo.sam_state_dict(payload)
            arch = architecture_from_state_dict(state)
        except (ValueError, KeyError) as error:
            raise ModelError(f"checkpoint {path}: {error}") from error
    sam = build_sam(arch)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"checkpoint {path} does not fit the detected architecture: {error}") from error
    return sam.eval(), arch, metadata


def save_model(model: Sam, arch: SamArchitecture, path: str | os.PathLike, *, half: bool = False, **metadata) -> str:
    """Write a full model in the project's format (architecture + state dict), atomically; return its sha256."""
    from ..io import atomic_torch_save

    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu() for k, v in model.state_dict().items()
    }
    atomic_torch_save(
        {
            "format": MODEL_FILE_FORMAT,
            "architecture": arch.to_dict(),
            "state_dict": state,
            "metadata": metadata,
        },
        path,
    )
    return file_sha256(path)
