"""What each simulated node does when it runs.

Values flowing between nodes are small stand-ins (:class:`SimImage`,
:class:`SimLatent`, :class:`SimObject`).  Node functions receive a
:class:`NodeContext`, implemented by the engine, to report steps (progress +
preview, interrupt check), to spend time working without reporting it, and to
save images.

How long the default text-to-image graph's nodes take is counted in sampler steps
(:data:`WORK_STEPS`), so a server's ``step_ms`` sets the speed of the whole simulated
machine: a checkpoint load from disk is worth 40 steps (2 s at the default 50 ms, the
order of a 2 GB SD 1.5 checkpoint read from an SSD, against about 1 s for 20 sampler
steps on a fast GPU), a VAE decode of a 512x512 image 4, saving it as PNG 2. Cached
nodes do not run, so a warm run skips the load, as ComfyUI does. The recorder's probe
nodes take only the time their ``step_ms`` says, as in the traces (CPU, 64x64 images).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .images import RGB, color_to_rgb

__all__ = [
    "BEHAVIOURS",
    "DEFAULT_KSAMPLER_STEP_MS",
    "WORK_STEPS",
    "NodeContext",
    "NodeFailure",
    "NodeResult",
    "SimImage",
    "SimLatent",
    "SimObject",
]

#: Per-step duration of KSampler when the server has no ``step_ms`` override.
DEFAULT_KSAMPLER_STEP_MS = 50.0

#: Work of a node that reports no steps, in sampler steps (scaled by the step duration);
#: per 512x512 image for the decode and the save, before the first step for KSampler.
WORK_STEPS = {
    "CheckpointLoaderSimple": 40.0,
    "CLIPTextEncode": 1.0,
    "EmptyLatentImage": 0.05,
    "KSampler": 1.0,
    "VAEDecode": 4.0,
    "SaveImage": 2.0,
    "PreviewImage": 1.0,
}
_PIXELS_512 = 512 * 512


@dataclass(frozen=True)
class SimImage:
    """An IMAGE batch of one flat colour."""

    width: int
    height: int
    batch: int
    rgb: RGB

    def __repr__(self) -> str:
        r, g, b = (c / 255 for c in self.rgb)
        row = f"[{r:.4f}, {g:.4f}, {b:.4f}]"
        shape = f"[{self.batch}, {self.height}, {self.width}, 3]"
        return f"tensor([[[{row},\n          ...,\n          {row}]]])  # shape {shape}"


@dataclass(frozen=True)
class SimLatent:
    """A LATENT batch (``width``/``height`` in pixels)."""

    width: int
    height: int
    batch: int
    seed: int = 0

    def __repr__(self) -> str:
        return f"{{'samples': tensor(shape=[{self.batch}, 4, {self.height // 8}, {self.width // 8}])}}"


@dataclass(frozen=True)
class SimObject:
    """MODEL / CLIP / VAE / CONDITIONING placeholders."""

    kind: str
    name: str

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name!r}>"


class NodeFailure(Exception):
    """A node raised: becomes ``execution_error`` with these fields."""

    def __init__(self, exception_type: str, message: str, traceback: list[str]) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message
        self.traceback = traceback


@dataclass
class NodeResult:
    """Outputs (one value per declared output) and the optional ``ui`` dict of an output node."""

    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


class NodeContext(Protocol):
    """Services the engine offers to a running node."""

    def step_ms(self, requested: float | None) -> float:
        """Per-step duration: the server override, else ``requested``, else the KSampler default."""
        ...

    async def step(self, value: int, total: int, rgb: RGB, step_ms: float) -> None:
        """Wait one step, honour an interrupt, then report progress with a preview."""
        ...

    def save_images(self, image: SimImage, prefix: str, kind: str) -> list[dict[str, str]]:
        """Store PNGs of ``image`` and return their ``{filename, subfolder, type}`` records."""
        ...

    def input_file(self, name: str) -> bytes | None:
        """The bytes of the uploaded file a loader's input names (``subfolder/name``), None if missing."""
        ...

    async def text(self, text: str) -> None:
        """Send progress text for the running node (binary type 3, to every socket, as ComfyUI does)."""
        ...

    async def work(self, steps: float) -> None:
        """Spend the time of ``steps`` sampler steps without reporting anything (loading, decoding)."""
        ...


Behaviour = Callable[..., Awaitable[NodeResult]]


def _fail_frame(function: str, line: str) -> str:
    return f'  File "sidecar/simulator/runtime.py", line 1, in {function}\n    {line}\n'


async def _empty_image(
    ctx: NodeContext, width: int = 512, height: int = 512, batch_size: int = 1, color: int = 0
) -> NodeResult:
    return NodeResult((SimImage(int(width), int(height), int(batch_size), color_to_rgb(color)),))


async def _bridge_probe(
    ctx: NodeContext, image: SimImage, steps: int, step_ms: int = 250, fail_at: int = -1, seed: int = 0
) -> NodeResult:
    duration = ctx.step_ms(float(step_ms))
    steps = int(steps)
    for i in range(1, steps + 1):
        shade = ((image.rgb[0] + 8 * i) % 256, image.rgb[1], (image.rgb[2] + int(seed)) % 256)
        await ctx.step(i, steps, shade, duration)
        if i == int(fail_at):
            message = f"BridgeProbe: deliberate failure at step {i} (seed {seed})"
            raise NodeFailure("Exception", message, [_fail_frame("run", "raise Exception(message)")])
    return NodeResult((image,))


async def _bridge_text(ctx: NodeContext, text: str, image: SimImage | None = None) -> NodeResult:
    lines = [str(text)]
    if image is not None:
        lines.append(f"image shape: [{image.batch}, {image.height}, {image.width}, 3]")
    return NodeResult((), {"text": lines})


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; 64 x 64 for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big") or 64, int.from_bytes(data[20:24], "big") or 64
    return 64, 64


def _read_input(ctx: NodeContext, image: str) -> bytes:
    data = ctx.input_file(str(image))
    if data is None:  # removed after validation
        message = f"[Errno 2] No such file or directory: '{image}'"
        raise NodeFailure("FileNotFoundError", message, [_fail_frame("load_image", "Image.open(image_path)")])
    return data


async def _load_image(ctx: NodeContext, image: str) -> NodeResult:
    data = _read_input(ctx, image)
    width, height = _png_size(data)
    shade = hashlib.sha256(data).digest()
    return NodeResult((SimImage(width, height, 1, (shade[0], shade[1], shade[2])), SimObject("MASK", str(image))))


async def _load_image_mask(ctx: NodeContext, image: str, channel: str = "alpha") -> NodeResult:
    _read_input(ctx, image)
    return NodeResult((SimObject("MASK", f"{image}:{channel}"),))


async def _get_image_size(ctx: NodeContext, image: SimImage) -> NodeResult:
    await ctx.text(f"{image.width} x {image.height} pixels\nbatch of {image.batch}")
    return NodeResult((image.width, image.height, image.batch))


def _per_image(image: SimImage | SimLatent) -> float:
    """The share of one 512x512 image this batch is (a 64x64 probe image: 1/64)."""
    return image.width * image.height * image.batch / _PIXELS_512


async def _save_image(ctx: NodeContext, images: SimImage, filename_prefix: str = "ComfyUI") -> NodeResult:
    await ctx.work(WORK_STEPS["SaveImage"] * _per_image(images))
    return NodeResult((), {"images": ctx.save_images(images, str(filename_prefix), "output")})


async def _preview_image(ctx: NodeContext, images: SimImage) -> NodeResult:
    await ctx.work(WORK_STEPS["PreviewImage"] * _per_image(images))
    return NodeResult((), {"images": ctx.save_images(images, "", "temp")})


async def _checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> NodeResult:
    await ctx.work(WORK_STEPS["CheckpointLoaderSimple"])
    return NodeResult((SimObject("MODEL", ckpt_name), SimObject("CLIP", ckpt_name), SimObject("VAE", ckpt_name)))


async def _clip_text_encode(ctx: NodeContext, text: str, clip: SimObject) -> NodeResult:
    await ctx.work(WORK_STEPS["CLIPTextEncode"])
    return NodeResult((SimObject("CONDITIONING", str(text)[:64]),))


async def _empty_latent(ctx: NodeContext, width: int = 512, height: int = 512, batch_size: int = 1) -> NodeResult:
    await ctx.work(WORK_STEPS["EmptyLatentImage"])
    return NodeResult((SimLatent(int(width), int(height), int(batch_size)),))


async def _ksampler(
    ctx: NodeContext,
    model: SimObject,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: SimObject,
    negative: SimObject,
    latent_image: SimLatent,
    denoise: float = 1.0,
) -> NodeResult:
    duration = ctx.step_ms(None)
    steps = int(steps)
    base = int(seed) % 0xFFFFFF
    await ctx.work(WORK_STEPS["KSampler"])  # the model moved to the GPU, noise prepared
    for i in range(1, steps + 1):
        level = int(255 * i / steps)
        await ctx.step(i, steps, (level, (base >> 8) & 0xFF, base & 0xFF), duration)
    return NodeResult((SimLatent(latent_image.width, latent_image.height, latent_image.batch, int(seed)),))


async def _vae_decode(ctx: NodeContext, samples: SimLatent, vae: SimObject) -> NodeResult:
    await ctx.work(WORK_STEPS["VAEDecode"] * _per_image(samples))
    base = samples.seed % 0xFFFFFF
    rgb = (200, (base >> 8) & 0xFF, base & 0xFF)
    return NodeResult((SimImage(samples.width, samples.height, samples.batch, rgb),))


#: Node class name → coroutine function taking ``(ctx, **inputs)``.
BEHAVIOURS: dict[str, Behaviour] = {
    "EmptyImage": _empty_image,
    "BridgeProbe": _bridge_probe,
    "BridgeText": _bridge_text,
    "SaveImage": _save_image,
    "PreviewImage": _preview_image,
    "CheckpointLoaderSimple": _checkpoint_loader,
    "CLIPTextEncode": _clip_text_encode,
    "EmptyLatentImage": _empty_latent,
    "KSampler": _ksampler,
    "VAEDecode": _vae_decode,
    "GetImageSize": _get_image_size,
    "LoadImage": _load_image,
    "LoadImageMask": _load_image_mask,
}
