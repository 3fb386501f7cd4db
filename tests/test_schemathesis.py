"""Property-based API testing from the OpenAPI spec (schemathesis): whatever a client sends that the
spec allows, or almost allows, the service answers without a 5xx and in the shape it documents."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from server import Settings, create_app
from server.service import ClassifierService
from tests._server_fixtures import API_KEY, fill_memory, make_memory_images

# The app is made at import, without a memory (cheap: no model is loaded), so that schemathesis can
# generate one test per operation; the fixture below attaches a real memory before the first call.
# (schemathesis' `from_fixture` fails on pytest 9, and `from_asgi` would start the app at import.)
SETTINGS = Settings(memory=":memory:", api_key=API_KEY)
app = create_app(SETTINGS)
schema = schemathesis.openapi.from_dict(app.openapi())
schema.app = app


@pytest.fixture(scope="module", autouse=True)
def served_memory(tmp_path_factory, lite0):
    root = tmp_path_factory.mktemp("schemathesis")
    mem = fill_memory(str(root / "memory"), lite0, make_memory_images(root / "images", lite0))
    service = ClassifierService(mem, SETTINGS.model_copy(update={"thumbnail_dir": root / "thumbs"}),
                                app.state.metrics)
    app.state.service = service
    yield
    app.state.service = None
    service.close()
    mem.close()


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_api_answers_as_documented_and_never_with_a_5xx(case):
    # With the key, so the editing endpoints are exercised past authentication too. All checks run
    # except "schema-valid data is accepted": no schema can say "bytes that decode as an image" or
    # "a template that exists", so a valid-looking request may rightly get a 400 or 422.
    excluded = [schemathesis.checks.positive_data_acceptance]
    if case.media_type == "multipart/form-data":  # every multipart text part is a string: no type can be refused
        excluded.append(schemathesis.checks.negative_data_rejection)
    case.call_and_validate(headers={"X-API-Key": API_KEY}, excluded_checks=excluded)
