"""Request validation: the seed's parameter tables, ranges and cross-field rules."""

import pytest

from chalicelib.jobs.models import TRANSITIONS, JobStatus, JobType, parse_job_request, sources_of
from chalicelib.platform.errors import UnprocessableRequest

URL = "https://example.com/a.mp3"


def errors_of(job_type: JobType, body: object) -> dict[str, str]:
    with pytest.raises(UnprocessableRequest) as info:
        parse_job_request(job_type, body)
    return {d["field"]: d["message"] for d in info.value.details}


def test_csm_defaults_match_the_seed():
    req = parse_job_request(JobType.CSM, {"text": "hi"})
    assert (req.voice, req.temperature, req.topk) == ("random", 0.9, 50)
    assert (req.max_audio_length, req.pause_duration) == (10000, 150)
    assert (req.max_time, req.complete_in) == (1200, 3600)


def test_whisper_defaults_match_the_seed():
    req = parse_job_request(JobType.WHISPER, {"audio_url": URL})
    assert (req.model, req.task, req.language) == ("medium", "transcribe", "")


@pytest.mark.parametrize(
    "body, field, fragment",
    [
        ({"text": "a", "monologue": ["b"]}, "text", "exactly one"),
        ({}, "text", "exactly one"),
        ({"text": ""}, "text", "at least 1"),
        ({"monologue": []}, "monologue", "at least 1"),
        ({"monologue": ["ok", ""]}, "monologue.1", "at least 1"),
        ({"text": "a", "temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"text": "a", "temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"text": "a", "temperature": "hot"}, "temperature", "valid number"),
        ({"text": "a", "max_time": 59}, "max_time", "greater than or equal to 60"),
        ({"text": "a", "max_time": 7201}, "max_time", "less than or equal to 7200"),
        ({"text": "a", "max_time": "300"}, "max_time", "valid integer"),
        ({"text": "a", "complete_in": 59}, "complete_in", "greater than or equal to 60"),
        ({"text": "a", "complete_in": 86401}, "complete_in", "less than or equal to 86400"),
        ({"text": "a", "voice": "robot"}, "voice", "'random'"),
        ({"text": "a", "voice": "clone"}, "reference_audio_url", "requires"),
        ({"text": "a", "voice": "clone", "reference_audio_url": URL}, "reference_text", "requires"),
        ({"text": "a", "reference_text": "x"}, "voice", "only used with voice 'clone'"),
        ({"text": "a", "notify_ur1": URL}, "notify_ur1", "Extra inputs are not permitted"),
        ({"text": "a", "notify_url": "ftp://x.org/a"}, "notify_url", "absolute http(s) URL"),
        ({"text": "a", "notify_url": "/relative"}, "notify_url", "absolute http(s) URL"),
        ({"text": "a", "topk": 0}, "topk", "greater than or equal to 1"),
        ({"text": "a", "pause_duration": -1}, "pause_duration", "greater than or equal to 0"),
    ],
)
def test_csm_rules_name_field_and_rule(body, field, fragment):
    errors = errors_of(JobType.CSM, body)
    assert field in errors, errors
    assert fragment in errors[field]


def test_clone_with_reference_is_valid():
    req = parse_job_request(
        JobType.CSM,
        {"monologue": ["a", "b"], "voice": "clone", "reference_audio_url": URL, "reference_text": "r"},
    )
    assert req.sentences() == ["a", "b"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "audio_url"),
        ({"audio_url": URL, "model": "huge"}, "model"),
        ({"audio_url": URL, "task": "summarize"}, "task"),
        ({"audio_url": "not a url"}, "audio_url"),
        ({"audio_url": URL, "language": "en; rm -rf"}, "language"),
    ],
)
def test_whisper_rules(body, field):
    assert field in errors_of(JobType.WHISPER, body)


def test_portrait_and_analyze_require_their_urls():
    assert set(errors_of(JobType.PORTRAIT, {})) == {"image_url", "audio_url"}
    assert set(errors_of(JobType.ANALYZE, {})) == {"image_url"}


def test_non_object_body_is_rejected():
    assert errors_of(JobType.ANALYZE, ["x"]) == {"body": "must be a JSON object"}


def test_terminal_states_are_final():
    for state in (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT):
        assert state not in TRANSITIONS
        assert state.is_terminal
    assert sources_of(JobStatus.SUCCESS) == [JobStatus.RUNNING]
    assert set(sources_of(JobStatus.CANCELLED)) == {JobStatus.QUEUED, JobStatus.RUNNING}
