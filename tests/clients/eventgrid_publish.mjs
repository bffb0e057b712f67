// Publishes to galaxy-cloud's event router with the official Azure SDK for
// JavaScript (@azure/eventgrid), used unchanged: a key, a SAS token,
// CloudEvents, and a wrong key that must be refused. Driven by
// tests/events.rs; prints one JSON object per line.
import { AzureKeyCredential, AzureSASCredential, EventGridPublisherClient, generateSharedAccessSignature } from "@azure/eventgrid";

const [egEndpoint, egKey, ceEndpoint, ceKey] = process.argv.slice(2);
// The SDK's documented switch for a plain-HTTP endpoint on loopback (as for
// any local emulator); nothing else is changed.
const options = { allowInsecureConnection: true };
const say = (o) => console.log(JSON.stringify(o));

const keyClient = new EventGridPublisherClient(egEndpoint, "EventGrid", new AzureKeyCredential(egKey), options);
await keyClient.send([
  { subject: "/js/key", eventType: "Js.KeyPublished", dataVersion: "1.0", data: { n: 1 } },
]);
say({ step: "key", ok: true });

const expiry = new Date(Date.now() + 3600 * 1000);
const sas = await generateSharedAccessSignature(egEndpoint, new AzureKeyCredential(egKey), expiry);
const sasClient = new EventGridPublisherClient(egEndpoint, "EventGrid", new AzureSASCredential(sas), options);
await sasClient.send([{ subject: "/js/sas", eventType: "Js.SasPublished", dataVersion: "1.0", data: { n: 2 } }]);
say({ step: "sas", ok: true });

const ceClient = new EventGridPublisherClient(ceEndpoint, "CloudEvent", new AzureKeyCredential(ceKey), options);
await ceClient.send([{ source: "/js", type: "Js.CloudEvent", data: { n: 3 } }]);
say({ step: "cloudevents", ok: true });

try {
  const wrong = new EventGridPublisherClient(egEndpoint, "EventGrid", new AzureKeyCredential("d3JvbmcK"), options);
  await wrong.send([{ subject: "/js/wrong", eventType: "Js.Wrong", dataVersion: "1.0", data: {} }]);
  say({ step: "wrong-key", ok: false });
} catch (e) {
  say({ step: "wrong-key", ok: true, status: e.statusCode });
}
