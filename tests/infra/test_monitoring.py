"""The app stack's alarms, alarm topic and dashboard (infra/aws/app.yaml): wired to the
metric catalog the code emits and to the template's parameters (checked offline, on the
template `chalice package` renders), valid PutMetricAlarm/PutDashboard input, and created
on moto by the emulator deploy from the same definitions, then read back.

Moto (5.2.5) stores alarms but never evaluates them (a new alarm stays "OK", "Unchecked",
whatever data arrives; only SetAlarmState moves it), and its metric math only returns a
query's own id. So no test here claims an alarm fires: the moto test checks that the data
the code emits, pushed as CloudWatch would extract it, is what the alarms' and the
dashboard's metric queries read."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from typing import Any, Iterator

import pytest
from botocore.session import get_session
from botocore.validate import ParamValidator

from chalicelib.jobs.models import PHASES, TERMINAL_STATES, JobType
from infra.aws import deploy
from infra.aws.emulator import Resolver
from infra.aws.monitoring import alarm_kwargs, dashboard_kwargs, monitoring_template
from infra.aws.template import DATA_TEMPLATE, load_template, render_app_template, resolve_parameters
from tests.infra.test_deploy import client, moto, moto_url, stage  # noqa: F401 - fixtures

# --- the metric catalog (issue 13): name -> (unit, dimension sets) ---------------------------
CATALOG: dict[str, tuple[str, list[tuple[str, ...]]]] = {
    "JobsSubmitted": ("Count", [(), ("type",)]),
    "JobsFinished": ("Count", [("outcome",), ("type", "outcome")]),
    "QueueWait": ("Seconds", [(), ("type",)]),
    "RunTime": ("Seconds", [(), ("type",)]),
    "PhaseTime": ("Seconds", [("phase",)]),
    "Attempts": ("Count", [(), ("type",)]),
    "Takeovers": ("Count", [()]),
    "WebhookDeliveries": ("Count", [("outcome",)]),
    "GpuLaunches": ("Count", [()]),
    "GpuLaunchFailures": ("Count", [()]),
    "GpuBilledSeconds": ("Seconds", [()]),
    "GpuIdleSeconds": ("Seconds", [()]),
    "FleetBilledSeconds": ("Seconds", [("fleet",)]),
    "FleetIdleSeconds": ("Seconds", [("fleet",)]),
    "JobBilledGpuSeconds": ("Seconds", [("fleet",)]),
    "BadInputRejections": ("Count", [(), ("field",)]),
    "WorkerHeartbeats": ("Count", [()]),
}
TYPES = [t.value for t in JobType]
JOB_OUTCOMES = ["success", "failed", "cancelled", "timed_out"]
DELIVERY_OUTCOMES = ["delivered", "refused", "gave_up"]
# The phases a worker passes through ("queued" and "delivering" are the API's, not a worker's).
WORKER_PHASES = [p for p in PHASES if p not in ("queued", "delivering")]
FLEETS = ["media:fast"]  # the instance type the worker rents (C3_WORKLOAD_TYPE's default)
FIELDS = ["text", "audio_url"]  # open-ended; examples for the data pushed to moto


def dimension_values(metric: str, dimension: str) -> list[str] | None:
    """The values a dimension takes (None: any)."""
    if dimension == "outcome":
        return DELIVERY_OUTCOMES if metric == "WebhookDeliveries" else JOB_OUTCOMES
    return {"type": TYPES, "phase": WORKER_PHASES, "field": None, "fleet": FLEETS}[dimension]


def in_catalog(metric: str, dimensions: dict[str, str]) -> bool:
    if metric not in CATALOG or tuple(sorted(dimensions)) not in {tuple(sorted(s)) for s in CATALOG[metric][1]}:
        return False
    return all(dimension_values(metric, k) is None or v in dimension_values(metric, k)  # type: ignore[operator]
               for k, v in dimensions.items())


ALARMS = {  # logical id -> name suffix
    "JobsDeadLetterAlarm": "jobs-dead-lettered",
    "IntakeDeadLetterAlarm": "intake-dead-lettered",
    "JobsQueueAgeAlarm": "jobs-queue-age",
    "JobFailureRatioAlarm": "job-failure-ratio",
    "WebhookGiveUpAlarm": "webhook-give-ups",
    "GpuSpendAlarm": "gpu-spend",
    "WorkerHeartbeatAlarm": "no-worker-heartbeat",
}
ACCOUNT = "123456789012"
CLOUDWATCH = get_session().get_service_model("cloudwatch")


def test_catalog_values_match_the_code():
    assert sorted(JOB_OUTCOMES) == sorted(s.value for s in TERMINAL_STATES)
    assert TYPES == ["csm", "whisper", "portrait", "analyze"]  # the issue says tts/stt: these are the values
    assert WORKER_PHASES == ["downloading", "waiting_for_gpu", "waiting_for_node", "launching_gpu", "rendering",
                             "uploading"]


@pytest.fixture(scope="module")
def app() -> dict[str, Any]:
    return render_app_template("prod")


def resolver(app: dict[str, Any], stage_name: str = "prod", **params: str) -> Resolver:
    """Resolves app.yaml's monitoring resources as CloudFormation would for ``params``."""
    values = resolve_parameters(monitoring_template(app), {"Stage": stage_name, **params}, {})
    r = Resolver(values, {"AWS::Region": "us-east-1", "AWS::AccountId": ACCOUNT,
                          "AWS::StackName": f"c3-render-{stage_name}-app"})
    r.values["AlarmTopic"] = f"arn:aws:sns:us-east-1:{ACCOUNT}:c3-render-{stage_name}-alarms"
    for logical_id in ALARMS:
        name = r.resolve(app["Resources"][logical_id]["Properties"]["AlarmName"])
        r.attributes[(logical_id, "Arn")] = f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:{name}"
    return r


def queue_name(logical_id: str, stage_name: str = "prod") -> str:
    props = load_template(DATA_TEMPLATE)["Resources"][logical_id]["Properties"]
    return Resolver({"Stage": stage_name}, {}).resolve(props["QueueName"])


def stats(props: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An alarm's metrics by id (a single-metric alarm's under "m")."""
    if "Metrics" not in props:
        return {"m": {"Namespace": props["Namespace"], "MetricName": props["MetricName"],
                      "Dimensions": {d["Name"]: d["Value"] for d in props.get("Dimensions", [])},
                      "Stat": props["Statistic"], "Period": props["Period"]}}
    out = {}
    for q in props["Metrics"]:
        if "MetricStat" in q:
            m = q["MetricStat"]["Metric"]
            out[q["Id"]] = {"Namespace": m["Namespace"], "MetricName": m["MetricName"],
                            "Dimensions": {d["Name"]: d["Value"] for d in m.get("Dimensions", [])},
                            "Stat": q["MetricStat"]["Stat"], "Period": q["MetricStat"]["Period"]}
    return out


def expression(props: dict[str, Any]) -> str:
    [q] = [q for q in props["Metrics"] if q.get("ReturnData", True)]
    return q["Expression"]


# --- the template, offline ----------------------------------------------------------------------
def test_metrics_namespace_reaches_the_code_and_emf_needs_no_extra_rights(app):
    namespace = app["Parameters"]["MetricsNamespace"]
    assert namespace["Default"] == "C3Render" and namespace["Type"] == "String"
    assert app["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == {
        "Ref": "MetricsNamespace"}
    res = app["Resources"]
    [container] = res["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    # Powertools adds POWERTOOLS_SERVICE_NAME as a "service" dimension to every metric: the
    # alarms' metrics have none.
    assert "POWERTOOLS_SERVICE_NAME" not in json.dumps(app)
    # EMF: CloudWatch Logs extracts the metrics from the log events, the worker's included
    # (awslogs, one event per line: a multiline pattern would merge EMF documents). No
    # cloudwatch:PutMetricData anywhere; logs:PutLogEvents is what it takes.
    logging = container["LogConfiguration"]
    assert logging["LogDriver"] == "awslogs" and not any("multiline" in o for o in logging["Options"])
    actions = [a for spec in res.values() if spec["Type"] == "AWS::IAM::Role"
               for policy in spec["Properties"].get("Policies", [])
               for s in policy["PolicyDocument"]["Statement"] for a in _as_list(s["Action"])]
    assert "logs:PutLogEvents" in actions and not [a for a in actions if a.startswith("cloudwatch:")]
    execution = res["WorkerExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert any("logs:PutLogEvents" in s["Action"] and s["Resource"] == {"Fn::Sub": "${WorkerLogGroup.Arn}"}
               for s in execution)
    for role in ("ApiHandlerRole", "DeadLettersRole", "WebhooksRole", "IntakeRole", "ReconcileRole", "GpuReaperRole"):
        [policy] = res[role]["Properties"]["Policies"]
        assert any("logs:PutLogEvents" in s["Action"] for s in policy["PolicyDocument"]["Statement"]), role


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_alarm_topic_with_an_optional_email(app):
    res = app["Resources"]
    assert res["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    sub = res["AlarmEmailSubscription"]
    assert sub["Condition"] == "HasAlarmEmail"
    assert sub["Properties"] == {"TopicArn": {"Ref": "AlarmTopic"}, "Protocol": "email",
                                 "Endpoint": {"Ref": "AlarmEmail"}}
    assert app["Parameters"]["AlarmEmail"]["Default"] == ""
    conditions = app["Conditions"]
    assert not resolver(app).condition({"Condition": "HasAlarmEmail"}, conditions)
    assert resolver(app, AlarmEmail="ops@example.com").condition({"Condition": "HasAlarmEmail"}, conditions)
    alarms = {k for k, v in res.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms - {"WorkerScaleOutAlarm", "WorkerScaleInAlarm"} == set(ALARMS)
    r = resolver(app, stage_name="qa")
    for logical_id, suffix in ALARMS.items():
        props = res[logical_id]["Properties"]
        assert props["AlarmActions"] == props["OKActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert props["TreatMissingData"] == "notBreaching", logical_id
        assert r.resolve(props["AlarmName"]) == f"c3-render-qa-{suffix}"
        description = r.resolve(props["AlarmDescription"])
        assert 200 < len(description) <= 1024 and "qa" in description, logical_id


def test_alarms_watch_the_catalog_and_the_queues_with_parameter_thresholds(app):
    res = app["Resources"]
    params = app["Parameters"]
    r = resolver(app)
    resolved = {k: r.resolve(res[k]["Properties"]) for k in ALARMS}
    raw = {k: res[k]["Properties"] for k in ALARMS}
    jobs, dlq = queue_name("JobsQueue"), queue_name("JobsDeadLetterQueue")

    # 1. Dead-lettered jobs: the DLQ's visible messages (and, as its Lambda drains it within
    #    seconds, those in flight and received), any of them >= 1.
    s = stats(resolved["JobsDeadLetterAlarm"])
    assert s["visible"] == {"Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
                            "Dimensions": {"QueueName": dlq}, "Stat": "Maximum", "Period": 60}
    assert {q["MetricName"] for q in s.values()} == {"ApproximateNumberOfMessagesVisible",
                                                     "ApproximateNumberOfMessagesNotVisible", "NumberOfMessagesReceived"}
    assert all(q["Dimensions"] == {"QueueName": dlq} for q in s.values())
    assert expression(resolved["JobsDeadLetterAlarm"]) == "MAX([FILL(visible, 0), FILL(inflight, 0), FILL(received, 0)])"
    assert (raw["JobsDeadLetterAlarm"]["Threshold"], raw["JobsDeadLetterAlarm"]["ComparisonOperator"]) == (
        1, "GreaterThanOrEqualToThreshold")

    # 2. Oldest job message, above QueueAgeAlarmSeconds.
    assert stats(resolved["JobsQueueAgeAlarm"])["m"] == {
        "Namespace": "AWS/SQS", "MetricName": "ApproximateAgeOfOldestMessage", "Dimensions": {"QueueName": jobs},
        "Stat": "Maximum", "Period": 60}
    assert raw["JobsQueueAgeAlarm"]["Threshold"] == {"Ref": "QueueAgeAlarmSeconds"}
    assert raw["JobsQueueAgeAlarm"]["ComparisonOperator"] == "GreaterThanThreshold"
    # Running jobs hold their message, and SQS counts them: the default leaves a full render.
    assert params["QueueAgeAlarmSeconds"]["Default"] > 1800

    # 3. Failure ratio over 15 minutes: failed / all four outcomes, 0 below a minimum.
    s = stats(resolved["JobFailureRatioAlarm"])
    assert {k: (q["MetricName"], q["Dimensions"], q["Stat"], q["Period"]) for k, q in s.items()} == {
        o: ("JobsFinished", {"outcome": o}, "Sum", 900) for o in JOB_OUTCOMES}
    assert all(q["Namespace"] == "C3Render" for q in s.values())
    total = next(q["Expression"] for q in resolved["JobFailureRatioAlarm"]["Metrics"] if q["Id"] == "total")
    assert total == " + ".join(f"FILL({o}, 0)" for o in JOB_OUTCOMES)
    assert expression(resolved["JobFailureRatioAlarm"]) == "IF(total >= 5, FILL(failed, 0) / total, 0)"
    assert raw["JobFailureRatioAlarm"]["Threshold"] == {"Ref": "FailureRatioThreshold"}
    assert raw["JobFailureRatioAlarm"]["ComparisonOperator"] == "GreaterThanThreshold"
    assert params["FailureRatioThreshold"]["Default"] == 0.2

    # 4. Webhook give-ups.
    assert stats(resolved["WebhookGiveUpAlarm"])["m"] == {
        "Namespace": "C3Render", "MetricName": "WebhookDeliveries", "Dimensions": {"outcome": "gave_up"},
        "Stat": "Sum", "Period": 300}
    assert (raw["WebhookGiveUpAlarm"]["Threshold"], raw["WebhookGiveUpAlarm"]["ComparisonOperator"]) == (
        1, "GreaterThanOrEqualToThreshold")

    # 5. GPU spend per hour, above the budget (default: the default fleet of 2 for the hour).
    assert stats(resolved["GpuSpendAlarm"])["m"] == {
        "Namespace": "C3Render", "MetricName": "GpuBilledSeconds", "Dimensions": {}, "Stat": "Sum", "Period": 3600}
    assert raw["GpuSpendAlarm"]["Threshold"] == {"Ref": "GpuBilledSecondsPerHourBudget"}
    assert raw["GpuSpendAlarm"]["ComparisonOperator"] == "GreaterThanThreshold"
    assert params["GpuBilledSecondsPerHourBudget"]["Default"] == params["WorkerMaxCount"]["Default"] * 3600

    # 6. Jobs waiting with no worker heartbeat, NoHeartbeatAlarmMinutes one-minute periods in a row.
    s = stats(resolved["WorkerHeartbeatAlarm"])
    # Jobs waiting in any priority lane count.
    assert s == {**{f"queued{lane}": {"Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
                                      "Dimensions": {"QueueName": jobs + suffix}, "Stat": "Maximum", "Period": 60}
                    for lane, suffix in (("high", "-high"), ("normal", ""), ("low", "-low"))},
                 "heartbeats": {"Namespace": "C3Render", "MetricName": "WorkerHeartbeats", "Dimensions": {},
                                "Stat": "Sum", "Period": 60}}
    assert expression(resolved["WorkerHeartbeatAlarm"]) == (
        "IF(FILL(queuedhigh, 0) + FILL(queuednormal, 0) + FILL(queuedlow, 0) > 0 AND FILL(heartbeats, 0) == 0, 1, 0)")
    heartbeat = raw["WorkerHeartbeatAlarm"]
    assert heartbeat["EvaluationPeriods"] == heartbeat["DatapointsToAlarm"] == {"Ref": "NoHeartbeatAlarmMinutes"}
    assert (heartbeat["Threshold"], heartbeat["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")

    # Every custom metric an alarm reads is one the code emits, under a dimension set it emits.
    for logical_id in ALARMS:
        for q in stats(raw[logical_id]).values():
            if q["Namespace"] != "AWS/SQS":
                assert q["Namespace"] == {"Ref": "MetricsNamespace"}, logical_id
                assert in_catalog(q["MetricName"], q["Dimensions"]), (logical_id, q)


def test_alarms_are_valid_put_metric_alarm_input(app):
    shape = CLOUDWATCH.operation_model("PutMetricAlarm").input_shape
    r = resolver(app, AlarmEmail="ops@example.com", MetricsNamespace="Acme/Render")
    for logical_id in ALARMS:
        kwargs = alarm_kwargs(r.resolve(app["Resources"][logical_id]["Properties"]))
        kwargs["AlarmActions"] = kwargs["OKActions"] = [f"arn:aws:sns:us-east-1:{ACCOUNT}:c3-render-prod-alarms"]
        report = ParamValidator().validate(kwargs, shape)
        assert not report.has_errors(), (logical_id, report.generate_report())
        assert isinstance(kwargs["Threshold"], float) and isinstance(kwargs["EvaluationPeriods"], int)
        if "Metrics" in kwargs:
            ids = [q["Id"] for q in kwargs["Metrics"]]
            assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[a-z][a-zA-Z0-9_]*", i) for i in ids)
            assert sum(q.get("ReturnData", True) for q in kwargs["Metrics"]) == 1
            for q in kwargs["Metrics"]:
                if "Expression" in q:
                    assert expression_ids(q["Expression"]) <= set(ids) - {q["Id"]}, (logical_id, q)
            assert len({q["MetricStat"]["Period"] for q in kwargs["Metrics"] if "MetricStat" in q}) == 1
        assert "C3Render" not in json.dumps(kwargs)  # the namespace parameter reaches every alarm
    with pytest.raises(ValueError, match="Bogus"):
        alarm_kwargs({"AlarmName": "x", "Bogus": 1})


def expression_ids(text: str) -> set[str]:
    """The metric ids a metric math expression uses (functions and keywords are upper case)."""
    text = re.sub(r"'[^']*'", "", text)
    return set(re.findall(r"\b[a-z][a-zA-Z0-9_]*\b", text))


# --- the dashboard -------------------------------------------------------------------------------
def dashboard_body(app: dict[str, Any], **params: str) -> dict[str, Any]:
    props = resolver(app, **params).resolve(app["Resources"]["Dashboard"]["Properties"])
    kwargs = dashboard_kwargs(props)
    report = ParamValidator().validate(kwargs, CLOUDWATCH.operation_model("PutDashboard").input_shape)
    assert not report.has_errors(), report.generate_report()
    return json.loads(kwargs["DashboardBody"])


def series(body: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(widget, metric) for every metric and expression of every metric widget; a metric as
    {"namespace", "name", "dimensions", "options"}, an expression as {"expression", ...}."""
    for widget in body["widgets"]:
        for entry in widget["properties"].get("metrics", []):
            if isinstance(entry[0], dict):
                yield widget, entry[0]
                continue
            options = entry[-1] if isinstance(entry[-1], dict) else {}
            names = [e for e in entry if not isinstance(e, dict)]
            assert "." not in names, entry  # no shorthand: every series says what it is
            namespace, name, *pairs = names
            yield widget, {"namespace": namespace, "name": name,
                           "dimensions": dict(zip(pairs[::2], pairs[1::2])), "options": options}


def test_dashboard_shows_every_catalog_metric_the_queues_and_the_alarms(app):
    body = dashboard_body(app)
    assert app["Resources"]["Dashboard"]["Properties"]["DashboardName"] == {"Fn::Sub": "c3-render-${Stage}"}
    custom = [(w, s) for w, s in series(body) if s.get("namespace") == "C3Render"]
    # Every metric of the catalog is on it, and nothing the code does not emit.
    assert {s["name"] for _, s in custom} == set(CATALOG)
    for _, s in custom:
        assert in_catalog(s["name"], s["dimensions"]), s
    shown = {(s["name"], tuple(sorted(s["dimensions"].items()))) for _, s in custom}
    for outcome in JOB_OUTCOMES:
        assert ("JobsFinished", (("outcome", outcome),)) in shown
    for outcome in DELIVERY_OUTCOMES:
        assert ("WebhookDeliveries", (("outcome", outcome),)) in shown
    for phase in WORKER_PHASES:
        assert ("PhaseTime", (("phase", phase),)) in shown
    for t in TYPES:
        assert ("JobsSubmitted", (("type", t),)) in shown and ("RunTime", (("type", t),)) in shown
    percentiles = {(s["name"], s["options"].get("stat", w["properties"].get("stat"))) for w, s in custom}
    assert {("QueueWait", "p50"), ("QueueWait", "p90"), ("RunTime", "p50"), ("RunTime", "p90"),
            ("PhaseTime", "p50"), ("PhaseTime", "p90")} <= percentiles
    # Bad-input rejections by field: fields are open-ended, so a SEARCH over the field dimension.
    searches = [s["expression"] for _, s in series(body) if "SEARCH(" in s.get("expression", "")]
    assert searches == ["SEARCH('{C3Render,field} MetricName=\"BadInputRejections\"', 'Sum', 300)"]
    # Queue depth, oldest age and the DLQs, by the data stack's queue names.
    sqs = {(s["name"], s["dimensions"]["QueueName"]) for _, s in series(body) if s.get("namespace") == "AWS/SQS"}
    jobs, dlq, intake_dlq = (queue_name(q) for q in ("JobsQueue", "JobsDeadLetterQueue", "IntakeDeadLetterQueue"))
    assert {("ApproximateNumberOfMessagesVisible", jobs), ("ApproximateNumberOfMessagesNotVisible", jobs),
            ("ApproximateAgeOfOldestMessage", jobs), ("ApproximateNumberOfMessagesVisible", dlq),
            ("ApproximateNumberOfMessagesVisible", intake_dlq)} <= sqs
    # The failure ratio graph is the alarm's expression; thresholds are drawn from the parameters.
    expressions = {s["expression"] for _, s in series(body) if "expression" in s}
    assert expression(resolver(app).resolve(app["Resources"]["JobFailureRatioAlarm"]["Properties"])) in expressions
    lines = {a["label"]: a["value"] for w in body["widgets"]
             for a in w["properties"].get("annotations", {}).get("horizontal", [])}
    assert lines == {"FailureRatioThreshold": 0.2, "QueueAgeAlarmSeconds": 2700, "GpuBilledSecondsPerHourBudget": 7200}
    # Every expression's ids are series of its own widget.
    for widget in body["widgets"]:
        ids = {s.get("id") or s["options"].get("id") for w, s in series(body) if w is widget}
        for w, s in series(body):
            if w is widget and "expression" in s:
                assert expression_ids(s["expression"]) <= ids - {None}, s
    # The alarm widget shows the six alarms.
    [alarm_widget] = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert alarm_widget["properties"]["alarms"] == [
        f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:c3-render-prod-{suffix}" for suffix in ALARMS.values()]
    # Laid out on the 24-column grid without overlaps.
    cells = set()
    for w in body["widgets"]:
        assert w["x"] + w["width"] <= 24, w
        area = {(x, y) for x in range(w["x"], w["x"] + w["width"]) for y in range(w["y"], w["y"] + w["height"])}
        assert not area & cells, w
        cells |= area


def test_dashboard_follows_the_stage_and_the_namespace(app):
    text = json.dumps(dashboard_body(app, stage_name="qa", MetricsNamespace="Acme/Render", FailureRatioThreshold="0.5"))
    assert "C3Render" not in text and "c3-render-prod" not in text and "c3-render-qa-jobs-dlq" in text
    assert "Acme/Render" in text and '"value": 0.5' in text


# --- on moto ---------------------------------------------------------------------------------
def catalog_data(namespace: str, at: dt.datetime) -> list[dict[str, Any]]:
    """One datum per (metric, dimension set, dimension values): the series the code emits, as
    CloudWatch extracts them from its EMF documents (every dimension set of a metric)."""
    data = []
    for name, (unit, dimension_sets) in CATALOG.items():
        for dimensions in dimension_sets:
            choices = [dimension_values(name, d) or FIELDS for d in dimensions]
            for values in itertools.product(*choices):
                data.append({"MetricName": name, "Unit": unit, "Value": 1.0, "Timestamp": at,
                             "Dimensions": [{"Name": d, "Value": v} for d, v in zip(dimensions, values)]})
    return data


def test_alarms_and_dashboard_on_moto(moto, stage, capsys):  # noqa: F811 - fixtures
    namespace = f"C3Render/{stage}"  # this test's metrics only, on a shared moto server
    params = {"AlarmEmail": "ops@example.com", "MetricsNamespace": namespace, "FailureRatioThreshold": "0.35"}
    argv = ["deploy", "--stage", stage] + [f"--param={k}={v}" for k, v in params.items()]
    assert deploy.main(argv) == 0
    printed = capsys.readouterr().out
    assert "skipped" not in printed and "AlarmEmailSubscription (AWS::SNS::Subscription): applied" in printed
    cw, sns = client("cloudwatch"), client("sns")
    prefix = f"c3-render-{stage}-"

    [topic] = [t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f":{prefix}alarms")]
    [sub] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert (sub["Protocol"], sub["Endpoint"]) == ("email", "ops@example.com")

    alarms = {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]}
    assert sorted(alarms) == sorted(prefix + suffix for suffix in ALARMS.values())
    app = load_template(deploy.APP_TEMPLATE)
    r = resolver(app, stage_name=stage, **params)
    for logical_id, suffix in ALARMS.items():
        wanted = alarm_kwargs(r.resolve(app["Resources"][logical_id]["Properties"]))
        got = alarms[prefix + suffix]
        assert got["AlarmActions"] == got["OKActions"] == [topic]
        for key in ("AlarmDescription", "Threshold", "ComparisonOperator", "EvaluationPeriods", "TreatMissingData",
                    "Namespace", "MetricName", "Statistic", "Period", "DatapointsToAlarm"):
            assert got.get(key) == wanted.get(key), (logical_id, key)
        assert [_query(q) for q in got.get("Metrics", [])] == [_query(q) for q in wanted.get("Metrics", [])]
    assert alarms[prefix + "job-failure-ratio"]["Threshold"] == 0.35

    body = json.loads(cw.get_dashboard(DashboardName=f"c3-render-{stage}")["DashboardBody"])
    [alarm_widget] = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert alarm_widget["properties"]["alarms"] == [alarms[prefix + s]["AlarmArn"] for s in ALARMS.values()]

    # The series the code emits are the ones the alarms and the dashboard read.
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    data = catalog_data(namespace, now)
    for start in range(0, len(data), 500):
        cw.put_metric_data(Namespace=namespace, MetricData=data[start:start + 500])
    queries = []
    for a in alarms.values():
        props = {"Namespace": a.get("Namespace"), "MetricName": a.get("MetricName"), "Dimensions": a.get("Dimensions", []),
                 "Statistic": a.get("Statistic"), "Period": a.get("Period"), **({"Metrics": a["Metrics"]} if a.get("Metrics") else {})}
        queries += [q for q in stats(props).values() if q["Namespace"] == namespace]
    queries += [{"Namespace": s["namespace"], "MetricName": s["name"], "Dimensions": s["dimensions"],
                 "Stat": "Sum", "Period": 60} for _, s in series(body) if s.get("namespace") == namespace]
    assert {q["MetricName"] for q in queries} == set(CATALOG)
    results = cw.get_metric_data(
        MetricDataQueries=[{"Id": f"q{i}", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": q["Namespace"], "MetricName": q["MetricName"],
                       "Dimensions": [{"Name": k, "Value": v} for k, v in q["Dimensions"].items()]},
            "Period": 60, "Stat": "Sum"}} for i, q in enumerate(queries)],
        StartTime=now - dt.timedelta(minutes=5), EndTime=now + dt.timedelta(minutes=5))["MetricDataResults"]
    empty = [queries[int(r["Id"][1:])] for r in results if not r["Values"]]
    assert len(results) == len(queries) and empty == []
    # Moto does not evaluate alarms: with a give-up and an hour's GPU budget exceeded in the data,
    # every alarm is still as created. (If this fails, moto evaluates now: assert ALARM instead.)
    cw.put_metric_data(Namespace=namespace, MetricData=[
        {"MetricName": "GpuBilledSeconds", "Unit": "Seconds", "Value": 99999.0, "Timestamp": now}])
    for a in cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]:
        assert (a["StateValue"], a["StateReason"]) == ("OK", "Unchecked: Initial alarm creation")

    assert deploy.main(["destroy", "--stage", stage]) == 0
    assert cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"] == []
    assert f"c3-render-{stage}" not in [d["DashboardName"] for d in cw.list_dashboards()["DashboardEntries"]]
    assert not [t for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f":{prefix}alarms")]


def _query(query: dict[str, Any]) -> dict[str, Any]:
    """A metric data query as DescribeAlarms returns it (ReturnData omitted when true), with
    no dimensions as an empty list."""
    out = {k: v for k, v in query.items() if not (k == "ReturnData" and v)}
    if "MetricStat" in out:
        metric = {"Dimensions": [], **out["MetricStat"]["Metric"]}
        out["MetricStat"] = {**out["MetricStat"], "Metric": metric}
    return out
