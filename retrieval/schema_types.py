"""Strings with a known shape, said in the JSON schema: a client generated from the service's OpenAPI spec then
parses ids as UUIDs and times as datetimes, and can pass an id it was given back where the spec asks for a UUID."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

PointIdText = Annotated[str, Field(json_schema_extra={"format": "uuid"})]
IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
