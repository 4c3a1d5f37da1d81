"""PURE wire types: ComfyUI frames (``comfy``), the ZeroMQ contract (``wire``, ``events``).

May import only the standard library's pure modules and msgspec; never asyncio,
sockets, files, time or random (a test enforces this).
"""
