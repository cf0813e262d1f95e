"""Import-time noise from optional backends that a user can do nothing about, filtered out.

With torchao installed (the `quantization` extra), importing transformers or diffusers models imports it, and a torchao
built for another torch release logs that its compiled kernels failed to load, torch logs that torchao registers its
enums the deprecated way, and diffusers that torchao's tensor types are missing. None of it affects what hf_dalle
uses (weight-only int8, which is pure PyTorch), so these messages, and only these, are dropped; anything else those
loggers say still shows.
"""

import logging


# Logger name -> the beginnings of the messages dropped from it.
_IMPORT_NOISE = {
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported",),
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


def quiet_optional_backend_warnings() -> None:
    """Install the filters (once: a logger keeps one `_DropMessages`)."""
    for name, prefixes in _IMPORT_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))


__all__ = ["quiet_optional_backend_warnings"]
