"""Apply the data-plane template (data.yaml) through the service APIs, for emulators.

On AWS, CloudFormation deploys data.yaml. Emulators implement CloudFormation partly
or not at all (moto's ignores TTL, lifecycle rules and bucket policies; LocalStack
community here runs only SQS and S3), so against an emulator the deploy reads the
same template and makes the calls CloudFormation would make, idempotently:

    tables (TTL, SSE), queues (attributes, redrive), buckets (encryption, public
    access block, ownership, lifecycle), bucket policies, ECR repositories

A resource whose service the endpoint answers as not implemented is reported as
skipped, with everything that depends on it; the rest is still created. A resource
whose Condition is false is omitted, as CloudFormation would. The app stack's alarms,
topic and dashboard go through the same Applier with monitoring.py's handlers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from botocore.exceptions import ClientError

from infra.local.stack import ensure_index

PSEUDO = {"AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}
_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")
_UNSUPPORTED_CODES = {"NotImplemented", "NotImplementedError", "InternalFailure",
                      "UnknownOperationException", "UnrecognizedClientException"}


class Unsupported(Exception):
    """No emulator serves this service (raised by the client factory)."""


@dataclass
class Outcome:
    logical_id: str
    type: str
    status: str  # "applied", "removed", "skipped", "omitted" (its Condition is false)
    detail: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def skipped(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "skipped"]


# --- intrinsic functions ----------------------------------------------------------
def references(value: Any) -> set[str]:
    """Names a template fragment refers to (resources, parameters, pseudo parameters)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref":
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0] if isinstance(inner, list) else inner.split(".")[0])
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                found |= {m.split(".")[0] for m in _SUB_VAR.findall(text)}
                if isinstance(inner, list):
                    found |= references(inner[1])
            else:
                found |= references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= references(inner)
    return found


class Resolver:
    def __init__(self, parameters: Mapping[str, str], pseudo: Mapping[str, str]):
        self.values: dict[str, Any] = {**PSEUDO, **pseudo, **parameters}
        self.attributes: dict[tuple[str, str], Any] = {}

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.values[arg]
            if key == "Fn::GetAtt":
                name, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.attributes[(name, attr)]
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(self.resolve(i)) for i in items)
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub(self, arg: Any) -> str:
        text, local = (arg[0], self.resolve(arg[1])) if isinstance(arg, list) else (arg, {})

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in local:
                return str(local[name])
            if "." in name and name not in self.values:
                resource, attr = name.split(".", 1)
                return str(self.attributes[(resource, attr)])
            return str(self.values[name])

        return _SUB_VAR.sub(one, text).replace("${!", "${")

    def condition(self, expression: Any, conditions: Mapping[str, Any]) -> bool:
        """A template condition's value (Fn::Equals/Not/And/Or, and other conditions)."""
        if isinstance(expression, dict) and len(expression) == 1:
            (key, arg), = expression.items()
            if key == "Condition":
                return self.condition(conditions[arg], conditions)
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.condition(arg[0], conditions)
            if key == "Fn::And":
                return all(self.condition(a, conditions) for a in arg)
            if key == "Fn::Or":
                return any(self.condition(a, conditions) for a in arg)
        raise ValueError(f"unsupported condition {expression!r}")


# --- resource handlers ---------------------------------------------------------------
class Handler:
    service = ""

    def apply(self, client: Any, props: dict[str, Any], ctx: "Applier") -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def remove(self, client: Any, props: dict[str, Any], ctx: "Applier") -> None:
        raise NotImplementedError


class DynamoTable(Handler):
    service = "dynamodb"

    def apply(self, client, props, ctx):
        name = props["TableName"]
        kwargs = {
            "TableName": name, "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"], "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if props.get("SSESpecification", {}).get("SSEEnabled"):
            kwargs["SSESpecification"] = {"Enabled": True}
        indexes = props.get("GlobalSecondaryIndexes", [])
        if indexes:
            kwargs["GlobalSecondaryIndexes"] = indexes
        try:
            client.create_table(**kwargs)
        except ClientError as exc:
            if _code(exc) != "ResourceInUseException":
                raise
        client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
        for index in indexes:  # a table created before the index existed gets it now
            keys = {k["AttributeName"] for k in index["KeySchema"]}
            ensure_index(client, name, index, [a for a in props["AttributeDefinitions"] if a["AttributeName"] in keys])
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            current = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            wanted_on = bool(ttl.get("Enabled"))
            if (current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")) != wanted_on or (
                    wanted_on and current.get("AttributeName") != ttl["AttributeName"]):
                client.update_time_to_live(TableName=name, TimeToLiveSpecification={
                    "Enabled": wanted_on, "AttributeName": ttl["AttributeName"]})
        arn = client.describe_table(TableName=name)["Table"]["TableArn"]
        return name, {"Arn": arn}

    def remove(self, client, props, ctx):
        _ignore(lambda: client.delete_table(TableName=props["TableName"]), "ResourceNotFoundException")


class SqsQueue(Handler):
    service = "sqs"
    ATTRIBUTES = ("VisibilityTimeout", "MessageRetentionPeriod", "ReceiveMessageWaitTimeSeconds",
                  "DelaySeconds", "MaximumMessageSize", "SqsManagedSseEnabled", "RedrivePolicy")

    def apply(self, client, props, ctx):
        name = props["QueueName"]
        url = client.create_queue(QueueName=name)["QueueUrl"]
        attributes = {key: _attribute(props[key]) for key in self.ATTRIBUTES if key in props}
        if attributes:
            client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, {"Arn": arn, "QueueName": name, "QueueUrl": url}

    def remove(self, client, props, ctx):
        try:
            url = client.get_queue_url(QueueName=props["QueueName"])["QueueUrl"]
        except ClientError:
            return
        client.delete_queue(QueueUrl=url)


class S3Bucket(Handler):
    service = "s3"

    def apply(self, client, props, ctx):
        name = props["BucketName"]
        try:
            if ctx.region == "us-east-1":
                client.create_bucket(Bucket=name)
            else:
                client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": ctx.region})
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        if "BucketEncryption" in props:
            rules = []
            for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]:
                api_rule: dict[str, Any] = {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
                if "BucketKeyEnabled" in rule:
                    api_rule["BucketKeyEnabled"] = rule["BucketKeyEnabled"]
                rules.append(api_rule)
            client.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
        if "PublicAccessBlockConfiguration" in props:
            client.put_public_access_block(Bucket=name,
                                           PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
        if "OwnershipControls" in props:
            client.put_bucket_ownership_controls(Bucket=name, OwnershipControls=props["OwnershipControls"])
        if "LifecycleConfiguration" in props:
            client.put_bucket_lifecycle_configuration(
                Bucket=name, LifecycleConfiguration={"Rules": [lifecycle_rule(r) for r in
                                                               props["LifecycleConfiguration"]["Rules"]]})
        return name, {"Arn": f"arn:{ctx.partition}:s3:::{name}"}

    def remove(self, client, props, ctx):
        name = props["BucketName"]
        try:
            empty_bucket(client, name)
            client.delete_bucket(Bucket=name)
        except ClientError as exc:
            if _code(exc) != "NoSuchBucket":
                raise


class S3BucketPolicy(Handler):
    service = "s3"

    def apply(self, client, props, ctx):
        client.put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(props["PolicyDocument"]))
        return props["Bucket"], {}

    def remove(self, client, props, ctx):
        _ignore(lambda: client.delete_bucket_policy(Bucket=props["Bucket"]), "NoSuchBucket")


class EcrRepository(Handler):
    service = "ecr"

    def apply(self, client, props, ctx):
        name = props["RepositoryName"]
        mutability = props.get("ImageTagMutability", "MUTABLE")
        scan = {"scanOnPush": bool(props.get("ImageScanningConfiguration", {}).get("ScanOnPush"))}
        try:
            client.create_repository(repositoryName=name, imageTagMutability=mutability,
                                     imageScanningConfiguration=scan)
        except ClientError as exc:
            if _code(exc) != "RepositoryAlreadyExistsException":
                raise
            client.put_image_tag_mutability(repositoryName=name, imageTagMutability=mutability)
            client.put_image_scanning_configuration(repositoryName=name, imageScanningConfiguration=scan)
        text = props.get("LifecyclePolicy", {}).get("LifecyclePolicyText")
        if text:
            client.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=text)
        repo = client.describe_repositories(repositoryNames=[name])["repositories"][0]
        return name, {"Arn": repo["repositoryArn"], "RepositoryUri": repo["repositoryUri"]}

    def remove(self, client, props, ctx):
        _ignore(lambda: client.delete_repository(repositoryName=props["RepositoryName"], force=True),
                "RepositoryNotFoundException")


HANDLERS: dict[str, Handler] = {
    "AWS::DynamoDB::Table": DynamoTable(),
    "AWS::SQS::Queue": SqsQueue(),
    "AWS::S3::Bucket": S3Bucket(),
    "AWS::S3::BucketPolicy": S3BucketPolicy(),
    "AWS::ECR::Repository": EcrRepository(),
}


def _attribute(value: Any) -> str:
    """A CloudFormation queue property as an SQS attribute string."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def lifecycle_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in the S3 API's shape."""
    out: dict[str, Any] = {"Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "Id" in rule:
        out["ID"] = rule["Id"]
    if "ExpirationInDays" in rule:
        out["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])}
    return out


def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object (and version) so the bucket can be deleted; returns how many."""
    count = 0
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start:start + 1000], "Quiet": True})
        count += len(keys)
    return count


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _ignore(call: Callable[[], Any], *codes: str) -> None:
    try:
        call()
    except ClientError as exc:
        if _code(exc) not in codes:
            raise


def _unsupported(exc: Exception) -> str | None:
    """Why the endpoint cannot do this at all, or None for a real error (an unreachable
    endpoint is a real error: a typo in AWS_ENDPOINT_URL must not pass as "skipped")."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 501 or _code(exc) in _UNSUPPORTED_CODES:
            return f"{_code(exc) or status}: {exc.response.get('Error', {}).get('Message', '')}".strip()
    return None


# --- the applier ----------------------------------------------------------------------
class Applier:
    """Creates, updates or removes a template's resources with ``client(service)``."""

    def __init__(self, client: Callable[[str], Any], region: str, account: str,
                 stack_name: str = "c3-render", partition: str = "aws",
                 handlers: Mapping[str, Handler] | None = None):
        self.client = client
        self.region = region
        self.account = account
        self.stack_name = stack_name
        self.partition = partition
        self.handlers = HANDLERS if handlers is None else handlers

    def _resolver(self, parameters: Mapping[str, str]) -> Resolver:
        return Resolver(parameters, {"AWS::Region": self.region, "AWS::AccountId": self.account,
                                     "AWS::StackName": self.stack_name, "AWS::Partition": self.partition})

    def _omitted(self, template: Mapping[str, Any], resolver: Resolver) -> dict[str, str]:
        """Resources whose Condition is false -> that condition's name."""
        conditions = template.get("Conditions", {})
        return {name: spec["Condition"] for name, spec in template["Resources"].items()
                if "Condition" in spec and not resolver.condition({"Condition": spec["Condition"]}, conditions)}

    def apply(self, template: Mapping[str, Any], parameters: Mapping[str, str]) -> Report:
        resolver = self._resolver(parameters)
        resources = template["Resources"]
        report = Report()
        skipped: set[str] = set()
        omitted = self._omitted(template, resolver)
        for logical_id in order(resources):
            spec = resources[logical_id]
            if logical_id in omitted:
                skipped.add(logical_id)
                report.outcomes.append(Outcome(logical_id, spec["Type"], "omitted",
                                               f"condition {omitted[logical_id]} is false"))
                continue
            handler = self.handlers.get(spec["Type"])
            blocked = sorted((references(spec) | set(_depends_on(spec))) & skipped)
            if handler is None or blocked:
                reason = f"depends on skipped {', '.join(blocked)}" if blocked else \
                    f"{spec['Type']} is not applied outside CloudFormation"
                skipped.add(logical_id)
                report.outcomes.append(Outcome(logical_id, spec["Type"], "skipped", reason))
                continue
            props = resolver.resolve(spec.get("Properties", {}))
            try:
                ref, attrs = handler.apply(self.client(handler.service), props, self)
            except Unsupported as exc:
                skipped.add(logical_id)
                report.outcomes.append(Outcome(logical_id, spec["Type"], "skipped", str(exc)))
                continue
            except ClientError as exc:
                why = _unsupported(exc)
                if why is None:
                    raise
                skipped.add(logical_id)
                report.outcomes.append(Outcome(logical_id, spec["Type"], "skipped",
                                               f"not supported by this endpoint ({why})"))
                continue
            resolver.values[logical_id] = ref
            for attr, value in attrs.items():
                resolver.attributes[(logical_id, attr)] = value
            report.outcomes.append(Outcome(logical_id, spec["Type"], "applied", str(ref)))
        for name, output in template.get("Outputs", {}).items():
            if not (references(output["Value"]) & skipped):
                report.outputs[name] = resolver.resolve(output["Value"])
        return report

    def remove(self, template: Mapping[str, Any], parameters: Mapping[str, str]) -> Report:
        resolver = self._resolver(parameters)
        resources = template["Resources"]
        report = Report()
        omitted = self._omitted(template, resolver)
        for logical_id in reversed(order(resources)):
            spec = resources[logical_id]
            handler = self.handlers.get(spec["Type"])
            if handler is None or logical_id in omitted:
                continue
            # Only names are needed to delete; other resources' attributes may be absent.
            props = {k: v for k, v in spec.get("Properties", {}).items()
                     if k in ("TableName", "QueueName", "BucketName", "Bucket", "RepositoryName",
                              "TopicName", "AlarmName", "DashboardName")}
            props = resolver.resolve(_refs_to_names(props, resources, resolver))
            try:
                handler.remove(self.client(handler.service), props, self)
            except Unsupported as exc:
                report.outcomes.append(Outcome(logical_id, spec["Type"], "skipped", str(exc)))
                continue
            except ClientError as exc:
                why = _unsupported(exc)
                if why is None:
                    raise
                report.outcomes.append(Outcome(logical_id, spec["Type"], "skipped", why))
                continue
            report.outcomes.append(Outcome(logical_id, spec["Type"], "removed"))
        return report


def _refs_to_names(props: dict[str, Any], resources: Mapping[str, Any], resolver: Resolver) -> dict[str, Any]:
    """``Bucket: !Ref ResultsBucket`` -> that bucket's name expression (nothing was applied)."""
    out = {}
    for key, value in props.items():
        if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in resources:
            target = resources[value["Ref"]].get("Properties", {})
            value = next(target[k] for k in ("BucketName", "QueueName", "TableName", "RepositoryName")
                         if k in target)
        out[key] = value
    return out


def _depends_on(spec: Mapping[str, Any]) -> list[str]:
    deps = spec.get("DependsOn", [])
    return [deps] if isinstance(deps, str) else list(deps)


def order(resources: Mapping[str, Any]) -> list[str]:
    """Resources in dependency order (template order where free)."""
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise ValueError(f"circular reference through {name}")
        visiting.add(name)
        spec = resources[name]
        for dep in sorted((references(spec) | set(_depends_on(spec))) & set(resources)):
            visit(dep)
        visiting.discard(name)
        done.append(name)

    for name in resources:
        visit(name)
    return done

