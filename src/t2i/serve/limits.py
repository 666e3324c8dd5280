"""What one request may ask of the server, refused before anything is queued or allocated.

Every limit is a number a person can raise on the command line (`t2i serve --max-steps 500`); a
request past one gets a 4xx JSON error naming it, so a client can tell a limit from a bug.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class LimitError(Exception):
    """A request over one of the server's limits: HTTP `status`, the limit's name, one line."""

    def __init__(self, limit: str, message: str, status: int = 422):
        super().__init__(message)
        self.limit, self.status = limit, status


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 1024 * 1024  # per image, width × height
    max_steps: int = 150  # AUTOMATIC1111's slider stops here too
    max_images: int = 16  # per job (batch_size × n_iter)
    max_prompt_chars: int = 2000
    max_upload_bytes: int = 16 * 2**20  # one base64-decoded image
    max_upload_pixels: int = 4096 * 4096  # what an uploaded image may declare before it is decoded
    max_queue: int = 100  # jobs waiting, not counting the running one

    @property
    def max_body_bytes(self) -> int:
        """A request's body: two uploads in base64 (an image and its mask) and a megabyte for the rest."""
        return 2 * (self.max_upload_bytes * 4 // 3 + 4) + 2**20

    def as_dict(self) -> dict:
        return asdict(self)

    def check_count(self, limit: str, what: str, value: int, status: int = 422) -> None:
        maximum = getattr(self, limit)
        if value > maximum:
            raise LimitError(limit, f"{what} is {value}, more than this server's {limit} of {maximum}", status)

    def check_prompt(self, name: str, text: str) -> None:
        self.check_count("max_prompt_chars", f"{name} length (characters)", len(text))

    def check_size(self, width: int, height: int) -> None:
        self.check_count("max_pixels", f"{width}×{height}: the pixels per image", width * height)
