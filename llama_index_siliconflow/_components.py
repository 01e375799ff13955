"""What both LlamaIndex components share: reading back LlamaIndex's own serialized forms."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator


class Serialized(BaseModel):
    """Takes back what LlamaIndex's serialization gives (`model_dump`, `to_dict`, `to_json`):
    a dump names its class under `class_name`, which is no field of ours."""

    @classmethod
    def class_name(cls) -> str:
        raise NotImplementedError

    @model_validator(mode="before")
    @classmethod
    def _read_back(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("class_name") == cls.class_name():
            return {name: value for name, value in values.items() if name != "class_name"}
        return values
