"""The one exception type for bad input from a user, and telling the machine's limits from bugs.

`UserError` subclasses `ValueError`, so library callers can catch what they expect, while the
CLI and the server turn it into a one-line message instead of a traceback.
"""

OUT_OF_MEMORY = "out of memory: ask for fewer or smaller images, a smaller batch or a smaller model"


class UserError(ValueError):
    """Bad input that the user can fix: the message says what is wrong and what to do."""


def out_of_memory(error: BaseException) -> bool:
    """Whether an error is an allocation failing (Python's MemoryError, or torch's, CPU or CUDA)."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def peer_lost(error: BaseException) -> bool:
    """Whether a collective failed because another process of a distributed run went away (gloo's and
    NCCL's words for it): not this process's fault, and torchrun restarts the group if allowed."""
    text = str(error)
    return isinstance(error, RuntimeError) and any(words in text for words in (
        "Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted"))
