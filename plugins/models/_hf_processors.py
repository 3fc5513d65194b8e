"""The generic plugin's processor loading: the checkpoint's own processor class, offline,
built without its video processor where torchvision is not usable (transformers 5 builds
video processors only with torchvision; mch passes images and audio only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mch.api import MchError
from mch.checkpoints import one_line


def _no_video_types() -> tuple[type, type]:
    from transformers.utils import PushToHubMixin

    class NoVideoProcessor(PushToHubMixin):
        """Stands in for a video processor, which needs torchvision (unusable here)."""

        _auto_class = None

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise MchError(
                "this checkpoint's video processor needs torchvision, which is not installed; "
                "mch passes images and audio only"
            )

        def to_dict(self) -> dict[str, Any]:
            return {}

    return NoVideoProcessor, PushToHubMixin


def torchvision_usable() -> bool:
    try:
        from transformers.utils import is_torchvision_available

        return bool(is_torchvision_available())
    except Exception:  # noqa: BLE001
        return False


def _named_processor_class(path: Path) -> str | None:
    """The processor class the checkpoint's own files name (as AutoProcessor reads them)."""
    import json

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            cls = json.loads((path / name).read_text()).get("processor_class")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(cls, str):
            return cls
    return None


def load_processor_any(name: str, path: Path, model_type: str, trust_remote_code: bool = False) -> Any:
    """The checkpoint's processor, offline. A processor class with a video processor is built
    without it when torchvision is missing (a stand-in raises if video is ever passed); image
    processors fall back to their PIL variants by themselves."""
    import transformers
    from transformers import AutoProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    cls_name = _named_processor_class(path) or PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, cls_name, None) if isinstance(cls_name, str) else None
    try:
        if cls is not None and not torchvision_usable() and any("video" in a for a in cls.get_attributes()):
            NoVideo, _ = _no_video_types()

            class WithoutVideo(cls):  # type: ignore[misc, valid-type]
                def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
                    if isinstance(argument, NoVideo):
                        return NoVideo
                    return super().check_argument_for_proper_class(argument_name, argument)

            WithoutVideo.__name__ = cls.__name__
            stand_ins = {a: NoVideo() for a in cls.get_attributes() if "video" in a}
            return WithoutVideo.from_pretrained(str(path), local_files_only=True, **stand_ins)
        return AutoProcessor.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except MchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise MchError(
            f"model {name!r}: cannot load the processor from {path} ({one_line(exc)[:300]}); the "
            f"checkpoint directory must hold the tokenizer and processor files of its release"
        ) from None
