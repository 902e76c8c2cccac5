"""No cluster object shows a Redis password in its repr (the URL's credentials are masked)."""

from __future__ import annotations

import pytest

from actors.cluster import ConversationClient, ConversationWorker, HostedConversation
from runtime import PipelineTask
from runtime.cluster import ClusterClient, ClusterWorker

URL = "redis://user:s3cret-pw@127.0.0.1:6379/0"


async def _session(key: str) -> PipelineTask:
    raise AssertionError("never called")


def _conversation(hosted: HostedConversation) -> PipelineTask:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ClusterWorker(URL, _session),
        lambda: ClusterClient(URL),
        lambda: ConversationWorker(URL, _conversation, storage_url=URL),
        lambda: ConversationClient(URL),
    ],
    ids=["ClusterWorker", "ClusterClient", "ConversationWorker", "ConversationClient"],
)
def test_a_repr_masks_the_redis_password(make: object) -> None:
    assert callable(make)
    text = repr(make())
    assert "s3cret-pw" not in text
    assert "redis://user:***@127.0.0.1:6379/0" in text
