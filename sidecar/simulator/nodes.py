"""Node class specifications served by the simulator (``/object_info``) and used by validation.

The classes are the recorder's probe nodes (``EmptyImage`` → ``BridgeProbe`` →
``SaveImage`` / ``PreviewImage`` / ``BridgeText``) and ComfyUI's default
text-to-image graph (``CheckpointLoaderSimple``, ``CLIPTextEncode``,
``EmptyLatentImage``, ``KSampler``, ``VAEDecode``), the loaders of uploaded files
(``LoadImage``, ``LoadImageMask``: :mod:`.uploads`), plus ``GetImageSize`` on
servers whose nodes send progress text.  Specs are data only; what a node does when
it runs lives in :mod:`sidecar.simulator.runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .versions import VersionProfile

__all__ = [
    "CHECKPOINTS",
    "SAMPLERS",
    "SCHEDULERS",
    "InputSpec",
    "NodeSpec",
    "build_registry",
    "object_info",
]

CHECKPOINTS = ["v1-5-pruned-emaonly-fp16.safetensors", "v1-5-pruned-emaonly.safetensors"]
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "ddim", "uni_pc"]
SCHEDULERS = ["simple", "normal", "karras", "exponential", "sgm_uniform", "beta"]
_U64_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class InputSpec:
    """One declared input: ``kind`` is a type name (``"INT"``, ``"IMAGE"``...) or a list of choices."""

    name: str
    kind: str | tuple[str, ...]
    options: dict[str, Any] | None = None
    required: bool = True

    def config(self) -> list[Any]:
        """The ``[type, options]`` list ComfyUI shows in ``/object_info`` and error ``input_config``."""
        kind: Any = list(self.kind) if isinstance(self.kind, tuple) else self.kind
        return [kind] if self.options is None else [kind, dict(self.options)]

    @property
    def is_combo(self) -> bool:
        return isinstance(self.kind, tuple)


@dataclass(frozen=True)
class NodeSpec:
    """Schema of one node class."""

    name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...] = ()
    output_node: bool = False
    function: str = "run"
    display_name: str = ""
    category: str = ""
    description: str = ""
    python_module: str = "nodes"
    output_names: tuple[str, ...] = field(default=())
    #: the input ``VALIDATE_INPUTS`` checks names an existing file (``LoadImage``'s ``image``):
    #: no choice-list check for it, "Invalid image file" when the file is missing
    validate_file: str | None = None

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None


def _tip(profile: VersionProfile, options: dict[str, Any], tooltip: str) -> dict[str, Any]:
    return {**options, "tooltip": tooltip} if profile.tooltips else options


def build_registry(profile: VersionProfile) -> dict[str, NodeSpec]:
    """Return the node classes of ``profile``'s server, keyed by class name."""
    t = profile
    image_in = InputSpec("images", "IMAGE", _tip(t, {}, "The images to save.") if t.tooltips else None)
    specs = [
        NodeSpec(
            "EmptyImage",
            (
                InputSpec("width", "INT", {"default": 512, "min": 1, "max": 16384, "step": 1}),
                InputSpec("height", "INT", {"default": 512, "min": 1, "max": 16384, "step": 1}),
                InputSpec("batch_size", "INT", {"default": 1, "min": 1, "max": 4096}),
                InputSpec("color", "INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}),
            ),
            outputs=("IMAGE",),
            function="generate",
            display_name="EmptyImage",
            category="image",
        ),
        NodeSpec(
            "BridgeProbe",
            (
                InputSpec("image", "IMAGE"),
                InputSpec("steps", "INT", {"default": 8, "min": 1, "max": 10000}),
                InputSpec("step_ms", "INT", {"default": 250, "min": 0, "max": 600000}),
                InputSpec("fail_at", "INT", {"default": -1, "min": -1, "max": 10000}),
                InputSpec("seed", "INT", {"default": 0, "min": 0, "max": _U64_MAX}),
            ),
            outputs=("IMAGE",),
            display_name="Bridge Probe (progress/preview/fail)",
            category="bridge_probe",
            python_module="custom_nodes.comfy_probe",
        ),
        NodeSpec(
            "BridgeText",
            (
                InputSpec("text", "STRING", {"default": "bridge text output"}),
                InputSpec("image", "IMAGE", {}, required=False),
            ),
            output_node=True,
            display_name="Bridge Text (text output)",
            category="bridge_probe",
            python_module="custom_nodes.comfy_probe",
        ),
        NodeSpec(
            "SaveImage",
            (
                image_in,
                InputSpec(
                    "filename_prefix",
                    "STRING",
                    _tip(t, {"default": "ComfyUI"}, "The prefix for the file to save."),
                ),
            ),
            output_node=True,
            function="save_images",
            display_name="Save Image",
            category="image",
            description="Saves the input images to your ComfyUI output directory." if t.tooltips else "",
        ),
        NodeSpec(
            "PreviewImage",
            (InputSpec("images", "IMAGE"),),
            output_node=True,
            function="save_images",
            display_name="Preview Image",
            category="image",
            description="Saves the input images to your ComfyUI output directory." if t.tooltips else "",
        ),
        NodeSpec(
            "CheckpointLoaderSimple",
            (
                InputSpec(
                    "ckpt_name",
                    tuple(CHECKPOINTS),
                    _tip(t, {}, "The name of the checkpoint (model) to load."),
                ),
            ),
            outputs=("MODEL", "CLIP", "VAE"),
            function="load_checkpoint",
            display_name="Load Checkpoint",
            category="loaders",
        ),
        NodeSpec(
            "CLIPTextEncode",
            (
                InputSpec(
                    "text",
                    "STRING",
                    _tip(t, {"multiline": True, "dynamicPrompts": True}, "The text to be encoded."),
                ),
                InputSpec(
                    "clip",
                    "CLIP",
                    _tip(t, {}, "The CLIP model used for encoding the text.") if t.tooltips else None,
                ),
            ),
            outputs=("CONDITIONING",),
            function="encode",
            display_name="CLIP Text Encode (Prompt)",
            category="conditioning",
        ),
        NodeSpec(
            "EmptyLatentImage",
            (
                InputSpec("width", "INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                InputSpec("height", "INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                InputSpec("batch_size", "INT", {"default": 1, "min": 1, "max": 4096}),
            ),
            outputs=("LATENT",),
            function="generate",
            display_name="Empty Latent Image",
            category="latent",
        ),
        NodeSpec(
            "KSampler",
            (
                InputSpec(
                    "model",
                    "MODEL",
                    _tip(t, {}, "The model used for denoising the input latent.") if t.tooltips else None,
                ),
                InputSpec("seed", "INT", {"default": 0, "min": 0, "max": _U64_MAX, "control_after_generate": True}),
                InputSpec("steps", "INT", {"default": 20, "min": 1, "max": 10000}),
                InputSpec("cfg", "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                InputSpec("sampler_name", tuple(SAMPLERS)),
                InputSpec("scheduler", tuple(SCHEDULERS)),
                InputSpec("positive", "CONDITIONING"),
                InputSpec("negative", "CONDITIONING"),
                InputSpec("latent_image", "LATENT"),
                InputSpec("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            ),
            outputs=("LATENT",),
            function="sample",
            display_name="KSampler",
            category="sampling",
        ),
        NodeSpec(
            "VAEDecode",
            (InputSpec("samples", "LATENT"), InputSpec("vae", "VAE")),
            outputs=("IMAGE",),
            function="decode",
            display_name="VAE Decode",
            category="latent",
        ),
        NodeSpec(
            "LoadImage",
            (InputSpec("image", (), {"image_upload": True}),),
            outputs=("IMAGE", "MASK"),
            function="load_image",
            display_name="Load Image",
            category="image",
            validate_file="image",
        ),
        NodeSpec(
            "LoadImageMask",
            (
                InputSpec("image", (), {"image_upload": True}),
                InputSpec("channel", ("alpha", "red", "green", "blue")),
            ),
            outputs=("MASK",),
            function="load_image",
            display_name="Load Image (as Mask)",
            category="mask",
            validate_file="image",
        ),
    ]
    if t.progress_text:
        specs.append(
            NodeSpec(
                "GetImageSize",
                (InputSpec("image", "IMAGE"),),
                outputs=("INT", "INT", "INT"),
                output_names=("width", "height", "batch_size"),
                function="get_size",
                display_name="Get Image Size",
                category="image",
                python_module="comfy_extras.nodes_images",
            )
        )
    return {spec.name: spec for spec in specs}


def object_info(spec: NodeSpec, profile: VersionProfile) -> dict[str, Any]:
    """Render one class the way ``GET /object_info/<Class>`` does on ``profile``'s server."""
    required = {i.name: i.config() for i in spec.inputs if i.required}
    optional = {i.name: i.config() for i in spec.inputs if not i.required}
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    info: dict[str, Any] = {"input": inputs}
    if profile.object_info_input_order:
        order: dict[str, Any] = {"required": list(required)}
        if optional:
            order["optional"] = list(optional)
        info["input_order"] = order
    if profile.object_info_v3_fields:
        info["is_input_list"] = False
    info.update(
        {
            "output": list(spec.outputs),
            "output_is_list": [False] * len(spec.outputs),
            "output_name": list(spec.output_names or spec.outputs),
            "name": spec.name,
            "display_name": spec.display_name or spec.name,
            "description": spec.description,
            "python_module": spec.python_module,
            "category": spec.category,
            "output_node": spec.output_node,
        }
    )
    if profile.object_info_v3_fields:
        info["search_aliases"] = []
    return info
