"""Gloo transformation options (``transformation.options.gloo.solo.io``), reference §8.8.

``options.stagedTransformations`` (TransformationStages) and the older
``options.transformations`` on a virtual host or a route. The request-transform ``matcher``
is Gloo's route Matcher, defined with the Gateway schema; ``bind_matcher`` is called once
that module has defined it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from dfproxy.config.schema_base import Model

if TYPE_CHECKING:
    from dfproxy.config.gloo_schema import Matcher


class InjaTemplate(Model):
    text: str = ""


class Extraction(Model):
    header: str | None = None
    body: dict[str, Any] | None = None
    regex: str = ""
    subgroup: int = Field(default=0, ge=0)
    replacement_text: str | None = None
    mode: Literal["EXTRACT", "SINGLE_REPLACE", "REPLACE_ALL"] = "EXTRACT"

    @model_validator(mode="after")
    def _check(self) -> Extraction:
        if (self.header is None) == (self.body is None):
            raise ValueError("an extractor takes its source from exactly one of header, body")
        if self.mode != "EXTRACT" and self.replacement_text is None:
            raise ValueError(f"{self.mode} mode set but no replacementText provided")
        if self.mode == "REPLACE_ALL" and self.subgroup:
            raise ValueError("REPLACE_ALL mode set but subgroup is not 0")
        return self


class HeaderToAppend(Model):
    key: str = Field(min_length=1)
    value: InjaTemplate = Field(default_factory=InjaTemplate)


class DynamicMetadataValue(Model):
    metadata_namespace: str = ""
    key: str = Field(min_length=1)
    value: InjaTemplate = Field(default_factory=InjaTemplate)
    json_to_proto: bool = False


class TransformationTemplate(Model):
    advanced_templates: bool = False
    extractors: dict[str, Extraction] = Field(default_factory=dict)
    headers: dict[str, InjaTemplate] = Field(default_factory=dict)
    headers_to_append: list[HeaderToAppend] = Field(default_factory=list)
    headers_to_remove: list[str] = Field(default_factory=list)
    body: InjaTemplate | None = None
    passthrough: dict[str, Any] | None = None
    merge_extractors_to_body: dict[str, Any] | None = None
    merge_json_keys: dict[str, Any] | None = None
    parse_body_behavior: Literal["ParseAsJson", "DontParse"] = "ParseAsJson"
    ignore_error_on_parse: bool = False
    dynamic_metadata_values: list[DynamicMetadataValue] = Field(default_factory=list)
    escape_characters: bool | None = None
    span_transformer: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> TransformationTemplate:
        given = [
            n
            for n, v in (
                ("body", self.body),
                ("passthrough", self.passthrough),
                ("mergeExtractorsToBody", self.merge_extractors_to_body),
                ("mergeJsonKeys", self.merge_json_keys),
            )
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(f"set one body transformation, got {', '.join(given)}")
        if self.merge_json_keys is not None:
            raise ValueError("mergeJsonKeys is not supported yet; use a body template")
        if self.span_transformer is not None:
            raise ValueError("spanTransformer is not supported (dfproxy does not trace)")
        return self


class Transformation(Model):
    transformation_template: TransformationTemplate | None = None
    header_body_transform: dict[str, Any] | None = None
    xslt_transformation: dict[str, Any] | None = None
    log_request_response_info: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> Transformation:
        if self.header_body_transform is not None:
            raise ValueError("headerBodyTransform is not supported; use transformationTemplate")
        if self.xslt_transformation is not None:
            raise ValueError("xsltTransformation is not supported; use transformationTemplate")
        return self


class RequestMatch(Model):
    matcher: Matcher | None = None
    clear_route_cache: bool = False
    request_transformation: Transformation | None = None
    response_transformation: Transformation | None = None


class ResponseHeaderMatcher(Model):
    """Gloo HeaderMatcher, matched against the response headers (``:status`` included)."""

    name: str = Field(min_length=1)
    value: str = ""
    regex: bool = False
    invert_match: bool = False


class ResponseMatch(Model):
    matchers: list[ResponseHeaderMatcher] = Field(default_factory=list)
    response_code_details: str | None = None
    response_transformation: Transformation | None = None


class RequestResponseTransformations(Model):
    request_transforms: list[RequestMatch] = Field(default_factory=list)
    response_transforms: list[ResponseMatch] = Field(default_factory=list)


class StagedTransformations(Model):
    early: RequestResponseTransformations | None = None
    regular: RequestResponseTransformations | None = None
    post_routing: dict[str, Any] | None = None
    inherit_transformation: bool = False
    log_request_response_info: bool | None = None
    escape_characters: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> StagedTransformations:
        if self.post_routing is not None:
            raise ValueError("postRouting transformations (Gloo Enterprise) are not supported")
        return self


class Transformations(Model):
    """The older ``options.transformations``: one request and one response transformation,
    applied at the regular stage to every request of the route."""

    request_transformation: Transformation | None = None
    response_transformation: Transformation | None = None
    clear_route_cache: bool = False


def bind_matcher(matcher: type[Any]) -> None:
    """Resolve RequestMatch.matcher to the Gateway schema's Matcher (called by it)."""
    RequestMatch.model_rebuild(_types_namespace={"Matcher": matcher})
    for model in (RequestResponseTransformations, StagedTransformations):
        model.model_rebuild()
