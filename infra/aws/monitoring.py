"""The app stack's alarms, alarm topic and dashboard (app.yaml), outside CloudFormation.

On AWS they are resources of the app stack. That stack cannot go to an emulator (the SAM
transform, the Lambdas, ECS), and moto's CloudFormation has no AWS::CloudWatch::Alarm
at all (nor AWS::SNS::Subscription); moto's CloudWatch and SNS APIs do hold alarms,
dashboards, topics and subscriptions. So against an emulator the deploy takes the slice
of app.yaml that only watches (``monitoring_template``) and makes the calls
CloudFormation would make, from the same definitions:

    AWS::SNS::Topic            -> CreateTopic
    AWS::SNS::Subscription     -> Subscribe
    AWS::CloudWatch::Alarm     -> PutMetricAlarm (``alarm_kwargs``)
    AWS::CloudWatch::Dashboard -> PutDashboard (``dashboard_kwargs``)

The worker's scaling alarms act on scaling policies, which have no emulator, so they
stay out of the slice.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from botocore.exceptions import ClientError

from .emulator import Handler, _code, _depends_on, _ignore, references

MONITORING_TYPES = frozenset({"AWS::CloudWatch::Alarm", "AWS::CloudWatch::Dashboard",
                              "AWS::SNS::Topic", "AWS::SNS::Subscription"})

# AWS::CloudWatch::Alarm properties: the PutMetricAlarm parameters of the same names.
ALARM_PROPERTIES = frozenset({
    "AlarmName", "AlarmDescription", "ActionsEnabled", "OKActions", "AlarmActions",
    "InsufficientDataActions", "MetricName", "Namespace", "Statistic", "ExtendedStatistic",
    "Dimensions", "Period", "Unit", "EvaluationPeriods", "DatapointsToAlarm", "Threshold",
    "ComparisonOperator", "TreatMissingData", "EvaluateLowSampleCountPercentile", "Metrics",
    "ThresholdMetricId", "Tags",
})
_INTEGERS = ("Period", "EvaluationPeriods", "DatapointsToAlarm")


def monitoring_template(template: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``template`` that only watches: its alarms, dashboards, SNS topics and
    subscriptions that refer to nothing but parameters and each other, with the
    parameters and conditions they use."""
    resources = template["Resources"]
    chosen = {name for name, spec in resources.items() if spec["Type"] in MONITORING_TYPES}
    while True:  # drop what refers outside the slice (and what refers to that)
        outside = {name for name in chosen
                   if (references(resources[name]) | set(_depends_on(resources[name]))) & set(resources) - chosen}
        if not outside:
            break
        chosen -= outside
    picked = {name: resources[name] for name in resources if name in chosen}
    all_conditions = template.get("Conditions", {})
    conditions: dict[str, Any] = {}
    pending = [spec["Condition"] for spec in picked.values() if "Condition" in spec]
    while pending:
        name = pending.pop()
        if name not in conditions:
            conditions[name] = all_conditions[name]
            pending += _condition_names(conditions[name])
    used = references(picked) | references(conditions)
    out: dict[str, Any] = {
        "Parameters": {k: v for k, v in template.get("Parameters", {}).items() if k in used},
        "Resources": picked,
    }
    if conditions:
        out["Conditions"] = conditions
    outputs = {}
    for key, output in template.get("Outputs", {}).items():
        refers_to = references(output["Value"]) & set(resources)
        if refers_to and refers_to <= chosen:
            outputs[key] = output
    if outputs:
        out["Outputs"] = outputs
    return out


def _condition_names(value: Any) -> list[str]:
    """Conditions a condition refers to (``{"Condition": name}``)."""
    if isinstance(value, dict):
        if set(value) == {"Condition"} and isinstance(value["Condition"], str):
            return [value["Condition"]]
        return [n for inner in value.values() for n in _condition_names(inner)]
    if isinstance(value, list):
        return [n for inner in value for n in _condition_names(inner)]
    return []


def alarm_kwargs(props: Mapping[str, Any]) -> dict[str, Any]:
    """An AWS::CloudWatch::Alarm's resolved properties as ``put_metric_alarm`` keyword
    arguments (same names; numbers and booleans from parameters arrive as strings)."""
    unknown = set(props) - ALARM_PROPERTIES
    if unknown:
        raise ValueError(f"alarm {props.get('AlarmName')}: properties without a PutMetricAlarm "
                         f"parameter: {', '.join(sorted(unknown))}")
    kwargs = dict(props)
    for key in _INTEGERS:
        if key in kwargs:
            kwargs[key] = int(kwargs[key])
    if "Threshold" in kwargs:
        kwargs["Threshold"] = float(kwargs["Threshold"])
    if "ActionsEnabled" in kwargs:
        kwargs["ActionsEnabled"] = _bool(kwargs["ActionsEnabled"])
    if "Metrics" in kwargs:
        kwargs["Metrics"] = [_query(q) for q in kwargs["Metrics"]]
    return kwargs


def _query(query: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(query)
    if "Period" in out:
        out["Period"] = int(out["Period"])
    if "ReturnData" in out:
        out["ReturnData"] = _bool(out["ReturnData"])
    if "MetricStat" in out:
        out["MetricStat"] = {**out["MetricStat"], "Period": int(out["MetricStat"]["Period"])}
    return out


def _bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() == "true"


def dashboard_kwargs(props: Mapping[str, Any]) -> dict[str, str]:
    """An AWS::CloudWatch::Dashboard's resolved properties as ``put_dashboard`` arguments;
    a body that is not JSON stops here, with where it breaks."""
    name, body = props["DashboardName"], props["DashboardBody"]
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"dashboard {name}: DashboardBody is not JSON once substituted: {exc}") from exc
    return {"DashboardName": name, "DashboardBody": body}


# --- emulator handlers (emulator.Applier) -----------------------------------------------
class SnsTopic(Handler):
    service = "sns"

    def apply(self, client, props, ctx):
        attributes = {"DisplayName": props["DisplayName"]} if "DisplayName" in props else {}
        arn = client.create_topic(Name=props["TopicName"], Attributes=attributes)["TopicArn"]
        return arn, {"TopicArn": arn, "TopicName": props["TopicName"]}

    def remove(self, client, props, ctx):
        suffix = f":{props['TopicName']}"
        for page in client.get_paginator("list_topics").paginate():
            for topic in page.get("Topics", []):
                if topic["TopicArn"].endswith(suffix):
                    _ignore(lambda arn=topic["TopicArn"]: client.delete_topic(TopicArn=arn), "NotFound")


class SnsSubscription(Handler):
    service = "sns"

    def apply(self, client, props, ctx):
        arn = client.subscribe(TopicArn=props["TopicArn"], Protocol=props["Protocol"],
                               Endpoint=props["Endpoint"], ReturnSubscriptionArn=True)["SubscriptionArn"]
        return arn, {}

    def remove(self, client, props, ctx):
        """Deleted with its topic."""


class CloudWatchAlarm(Handler):
    service = "cloudwatch"

    def apply(self, client, props, ctx):
        kwargs = alarm_kwargs(props)
        client.put_metric_alarm(**kwargs)
        [alarm] = client.describe_alarms(AlarmNames=[kwargs["AlarmName"]], AlarmTypes=["MetricAlarm"])["MetricAlarms"]
        return kwargs["AlarmName"], {"Arn": alarm["AlarmArn"]}

    def remove(self, client, props, ctx):
        client.delete_alarms(AlarmNames=[props["AlarmName"]])


class CloudWatchDashboard(Handler):
    service = "cloudwatch"

    def apply(self, client, props, ctx):
        kwargs = dashboard_kwargs(props)
        client.put_dashboard(**kwargs)
        return kwargs["DashboardName"], {}

    def remove(self, client, props, ctx):
        try:
            client.delete_dashboards(DashboardNames=[props["DashboardName"]])
        except ClientError as exc:
            if "not exist" not in str(exc) and _code(exc) not in ("ResourceNotFound", "DashboardNotFoundError"):
                raise


HANDLERS: dict[str, Handler] = {
    "AWS::SNS::Topic": SnsTopic(),
    "AWS::SNS::Subscription": SnsSubscription(),
    "AWS::CloudWatch::Alarm": CloudWatchAlarm(),
    "AWS::CloudWatch::Dashboard": CloudWatchDashboard(),
}
