"""Conversations across processes and hosts, on Redis (see ``docs/scale-out.md``).

- :class:`ConversationWorker` hosts the conversations placed on it, built by a
  :data:`ConversationFactory` from a :class:`HostedConversation`, persisted in a Redis
  conversation storage so that a conversation placed again resumes from it.
- :class:`ConversationClient` opens a :class:`RemoteConversation` by id from any process:
  ``send_text``, ``send``, ``interrupt()`` and its output frames.

The placement, delivery and interruption machinery is :mod:`runtime.cluster`.
"""

from ._client import ConversationClient, RemoteConversation
from ._worker import ConversationFactory, ConversationWorker, HostedConversation

__all__ = [
    "ConversationClient",
    "ConversationFactory",
    "ConversationWorker",
    "HostedConversation",
    "RemoteConversation",
]
