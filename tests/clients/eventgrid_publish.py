"""Publishes to galaxy-cloud's event router with the official Azure SDK
(azure-eventgrid), used unchanged: a key, a SAS token, CloudEvents, and a
wrong key that must be refused. Driven by tests/events_sdk.rs; prints one
JSON object per line."""

import datetime
import json
import sys

from azure.core.credentials import AzureKeyCredential, AzureSasCredential
from azure.core.exceptions import HttpResponseError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient, generate_sas


def say(**fields):
    print(json.dumps(fields), flush=True)


def main(eg_endpoint, eg_key, ce_endpoint, ce_key):
    with EventGridPublisherClient(eg_endpoint, AzureKeyCredential(eg_key)) as client:
        client.send([
            EventGridEvent(subject="/sdk/key", event_type="Sdk.KeyPublished", data={"n": 1}, data_version="1.0"),
            EventGridEvent(subject="/sdk/key", event_type="Sdk.KeyPublished", data={"n": 2}, data_version="1.0"),
        ])
        say(step="key", ok=True)

    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    token = generate_sas(eg_endpoint, eg_key, expiry)
    with EventGridPublisherClient(eg_endpoint, AzureSasCredential(token)) as client:
        client.send(EventGridEvent(subject="/sdk/sas", event_type="Sdk.SasPublished", data={"n": 3}, data_version="1.0"))
        say(step="sas", ok=True)

    with EventGridPublisherClient(ce_endpoint, AzureKeyCredential(ce_key)) as client:
        client.send([CloudEvent(source="/sdk", type="Sdk.CloudEvent", data={"n": 4}),
                     CloudEvent(source="/sdk", type="Sdk.CloudEvent", data=b"\x00\x01")])
        say(step="cloudevents", ok=True)

    try:
        with EventGridPublisherClient(eg_endpoint, AzureKeyCredential("d3JvbmcK")) as client:
            client.send(EventGridEvent(subject="/sdk/wrong", event_type="Sdk.Wrong", data={}, data_version="1.0"))
        say(step="wrong-key", ok=False)
    except HttpResponseError as e:
        say(step="wrong-key", ok=True, status=e.status_code)


if __name__ == "__main__":
    main(*sys.argv[1:5])
