"""Errors a user can act on: each says which file or value, what is wrong and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SatunetError(Exception):
    """Base class of every error satunet raises on purpose."""


class UnknownNameError(SatunetError, KeyError):
    """A name (model, dataset, option, config key...) that is not among the choices."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        close = difflib.get_close_matches(name, self.choices, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Choices: {', '.join(self.choices) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InputSizeError(SatunetError, ValueError):
    """An input tensor whose spatial size or band count the model cannot take."""


class WeightsUnavailableError(SatunetError, RuntimeError):
    """Pretrained weights could not be fetched or read."""


class DatasetNotFoundError(SatunetError, FileNotFoundError):
    """A dataset root, split or file is missing."""


class DataError(SatunetError, ValueError):
    """A data file exists but its content is wrong (corrupt, wrong size, bad class ids...)."""


class ChecksumError(SatunetError, ValueError):
    """A downloaded file does not have the expected checksum."""


class CheckpointError(SatunetError, ValueError):
    """A checkpoint file is missing, truncated, not satunet's, or does not match."""


class ConfigError(SatunetError, ValueError):
    """A configuration file or override is invalid."""


class TrainingError(SatunetError, RuntimeError):
    """Training cannot continue (non-finite loss, incompatible resume...)."""


class DeviceError(SatunetError, RuntimeError):
    """A device (e.g. CUDA) or precision was asked for that this machine cannot provide."""


class InputNotFoundError(SatunetError, FileNotFoundError):
    """An input image, folder or glob given to a command names nothing that exists."""


class OutputError(SatunetError, OSError):
    """An output file or folder cannot be created or written."""
