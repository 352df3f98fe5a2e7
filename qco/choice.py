"""A closed choice as a string enum: equal to its value, printed and written to JSON as it. Hydra rejects any
other value while composing, in one line; code compares it with plain strings."""

from enum import Enum


class Choice(str, Enum):
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)
