"""The interface the core uses to talk to workers, so it can be tested against a fake fleet."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Replies:
    """Replies to one or more remote-control commands.

    ``by_command[command][node]`` is the node's reply; ``missing`` lists nodes that were asked and
    did not answer every command in time.
    """

    by_command: Mapping[str, Mapping[str, Any]]
    missing: tuple[str, ...] = ()
    elapsed: float = 0.0

    def get(self, command: str, node: str, default: Any = None) -> Any:
        return self.by_command.get(command, {}).get(node, default)


@dataclass(frozen=True)
class Discovery:
    """The workers found online."""

    nodes: tuple[str, ...]
    #: ``broker-mailboxes`` (expected nodes read from the broker, pinged with an exact reply
    #: count) or ``broadcast`` (a ping to everyone, waiting the whole timeout).
    method: str
    #: Mailboxes the broker lists whose worker did not answer (stale or hung).
    silent: tuple[str, ...] = field(default_factory=tuple)


class Fleet(ABC):
    """Remote control of Celery workers."""

    @abstractmethod
    def ping(self, destination: Sequence[str] | None = None) -> list[str]:
        """Nodes that answer a ping. With ``destination``, returns as soon as all of them did."""

    @abstractmethod
    def gather(self, commands: Mapping[str, Mapping[str, Any]], destination: Sequence[str]) -> Replies:
        """Send several commands at once to ``destination`` and collect every reply in one wait."""

    @abstractmethod
    def control(
        self,
        command: str,
        arguments: Mapping[str, Any],
        destination: Sequence[str],
        *,
        reply: bool = True,
    ) -> Mapping[str, Any]:
        """Send one control command; with ``reply`` wait for each destination's answer."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
