// Drives galaxy-cloud's Durable Functions HTTP API with the official
// Durable Functions library for Node.js (durable-functions 3.x, its
// DurableClient), used unchanged. No Functions host: the client data the
// host would hand `getClient` is built here and points at galaxy-cloud.
// Needs galaxy-cloud started with `--samples`. Prints one JSON object per
// check; on the first failure prints {"ok":false,...} and exits 1.
//
//   node durable_client.mjs <baseUrl> <functionKey> <masterKey>
//   (or GALAXY_BASE_URL, GALAXY_FUNCTION_KEY, GALAXY_MASTER_KEY)
import { isDeepStrictEqual } from "node:util";
import df from "durable-functions";
// durable-functions' own dependency: the host's types for the invocation
// context getClient reads its binding data from, and for HTTP requests.
import azureFunctions from "@azure/functions";

const { InvocationContext, HttpRequest } = azureFunctions;
const { OrchestrationRuntimeStatus: Status } = df;

const [baseUrl, functionKey, masterKey] = [
  process.argv[2] ?? process.env.GALAXY_BASE_URL,
  process.argv[3] ?? process.env.GALAXY_FUNCTION_KEY,
  process.argv[4] ?? process.env.GALAXY_MASTER_KEY,
];
if (!baseUrl || !functionKey || !masterKey) {
  console.error("usage: node durable_client.mjs <baseUrl> <functionKey> <masterKey>");
  process.exit(2);
}
const base = baseUrl.replace(/\/+$/, "");
const say = (o) => console.log(JSON.stringify(o));

// ---- the client ---------------------------------------------------------

// The binding data the Durable extension gives a client function, in the
// extension's own template form: `{functionName}`, `[/{instanceId}]`,
// `{eventName}` and `{text}` are filled in by the client, `INSTANCEID` (the
// `id` field) is the instance id placeholder, and taskHub/connection ride
// along as the extension sends them (galaxy-cloud ignores them). No
// `rpcBaseUrl`: that switches the client to the host-local RPC endpoint.
// `extraQuery` goes onto the status template only (the listing reuses it).
function clientData(key, extraQuery = "") {
  const code = `code=${encodeURIComponent(key)}`;
  const hub = "taskHub=GalaxyHub&connection=Storage";
  const instance = `${base}/runtime/webhooks/durabletask/instances/INSTANCEID`;
  const starter = `${base}/api/orchestrators/{functionName}[/{instanceId}]`;
  return {
    taskHubName: "GalaxyHub",
    creationUrls: {
      createNewInstancePostUri: `${starter}?${code}`,
      createAndWaitOnNewInstancePostUri: `${starter}?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}&${code}`,
    },
    managementUrls: {
      id: "INSTANCEID",
      statusQueryGetUri: `${instance}?${hub}&${code}${extraQuery}`,
      sendEventPostUri: `${instance}/raiseEvent/{eventName}?${hub}&${code}`,
      terminatePostUri: `${instance}/terminate?reason={text}&${hub}&${code}`,
      rewindPostUri: `${instance}/rewind?reason={text}&${hub}&${code}`,
      purgeHistoryDeleteUri: `${instance}?${hub}&${code}`,
      restartPostUri: `${instance}/restart?${hub}&${code}`,
      suspendPostUri: `${instance}/suspend?reason={text}&${hub}&${code}`,
      resumePostUri: `${instance}/resume?reason={text}&${hub}&${code}`,
    },
    baseUrl: `${base}/runtime/webhooks/durabletask`,
    requiredQueryStringParameters: code,
  };
}

// getClient rewrites every URL to http://localhost:7071 unless
// WEBSITE_HOSTNAME names the host (as it does on Azure).
process.env.WEBSITE_HOSTNAME = new URL(base).host;

// A client exactly as the host builds it: a `durableClient` input binding
// whose value is the client data.
function client(key, extraQuery) {
  const input = df.input.durableClient();
  const context = new InvocationContext({ options: { extraInputs: [input] } });
  context.extraInputs.set(input, clientData(key, extraQuery));
  return df.getClient(context);
}

const durable = client(functionKey);
// The client has no page size; the same data with `top=2` on the status
// template makes every listing come back in pages of two, so it has to
// follow x-ms-continuation-token.
const paged = client(functionKey, "&top=2");
// Purging by filter needs the master key on galaxy-cloud.
const admin = client(masterKey);
// The HTTP request a starter function would have got; check-status URIs
// take its origin.
const request = new HttpRequest({ method: "POST", url: `${base}/api/js-starter` });

// ---- helpers -------------------------------------------------------------

let step = "setup";
async function check(name, body) {
  step = name;
  const detail = (await body()) ?? {};
  say({ step: name, ok: true, ...detail });
}
function expect(condition, message) {
  if (!condition) throw new Error(message);
}
function same(actual, expected, what) {
  expect(
    isDeepStrictEqual(actual, expected),
    `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`,
  );
}
async function rejects(promise, pattern, what) {
  try {
    await promise;
  } catch (e) {
    expect(pattern.test(String(e.message)), `${what}: wrong error: ${e.message}`);
    return e.message;
  }
  throw new Error(`${what}: expected an error matching ${pattern}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls getStatus until `accept(status)` or 30 s.
async function waitUntil(id, accept, what) {
  const deadline = Date.now() + 30_000;
  let status;
  while (Date.now() < deadline) {
    status = await durable.getStatus(id);
    if (accept(status)) return status;
    await sleep(100);
  }
  throw new Error(`${id}: ${what} not reached in 30 s (last: ${status?.runtimeStatus})`);
}
const waitFor = (id, runtimeStatus) =>
  waitUntil(id, (s) => s.runtimeStatus === runtimeStatus, runtimeStatus);

// Ids unique per run, so the script can run twice against one server.
const run = Date.now().toString(36);
const started = new Date(Date.now() - 5_000);
const finished = []; // ids of instances left Completed, Failed or Terminated

// ---- checks ----------------------------------------------------------------

try {
  let created;
  await check("start-generated-id", async () => {
    created = await durable.startNew("Galaxy_Create");
    expect(typeof created === "string" && created.length > 0, `no id: ${created}`);
    return { id: created };
  });

  await check("status-completed", async () => {
    const s = await waitFor(created, Status.Completed);
    same(s.name, "Galaxy_Create", "name");
    same(s.instanceId, created, "instanceId");
    expect(!Number.isNaN(s.createdTime.getTime()), `createdTime: ${s.createdTime}`);
    expect(s.lastUpdatedTime >= s.createdTime, "lastUpdatedTime before createdTime");
    expect(s.output !== null && s.output !== undefined, "no output");
    finished.push(created);
  });

  // A few more, so the listings below span several pages of two.
  await check("start-more", async () => {
    for (let i = 0; i < 3; i++) finished.push(await durable.startNew("Galaxy_Create"));
    for (const id of finished) await waitFor(id, Status.Completed);
    return { count: finished.length };
  });

  const waiting = `js-wait-${run}`;
  await check("start-with-id", async () => {
    same(
      await durable.startNew("Sample_WaitForEvent", { instanceId: waiting, input: { from: "js" } }),
      waiting,
      "returned id",
    );
  });

  await check("start-live-id-conflicts", async () => {
    await rejects(durable.startNew("Sample_WaitForEvent", { instanceId: waiting }), /409/, "second start");
  });

  await check("status-running", async () => {
    const s = await waitUntil(
      waiting,
      (s) => s.runtimeStatus === Status.Running && s.customStatus === "waiting for Approval",
      "Running with its custom status",
    );
    same(s.input, { from: "js" }, "input");
    same(s.output, null, "output while running");
  });

  // The client sends showHistory/showHistoryOutput/showInput; it keeps only
  // the fields it knows, so the history itself is not visible through it.
  await check("status-options", async () => {
    const s = await durable.getStatus(waiting, { showHistory: true, showHistoryOutput: true, showInput: false });
    same(s.instanceId, waiting, "instanceId");
    same(s.input, null, "input with showInput=false");
  });

  await check("status-unknown", async () => {
    await rejects(durable.getStatus(`js-nobody-${run}`), /404/, "unknown id");
  });

  await check("raise-event", async () => {
    await durable.raiseEvent(waiting, "Approval", { approved: true, by: "js" });
    const s = await waitFor(waiting, Status.Completed);
    same(s.output, { approved: true, by: "js" }, "output");
    finished.push(waiting);
  });

  await check("raise-event-finished", async () => {
    // 410 Gone: the client treats it as done.
    await durable.raiseEvent(waiting, "Approval", { late: true });
  });

  await check("raise-event-unknown", async () => {
    await rejects(durable.raiseEvent(`js-nobody-${run}`, "Approval", 1), /No instance/, "unknown id");
  });

  const paused = `js-suspend-${run}`;
  await check("suspend", async () => {
    await durable.startNew("Sample_WaitForEvent", { instanceId: paused });
    await waitFor(paused, Status.Running);
    await durable.suspend(paused, "paused by js");
    await waitFor(paused, "Suspended");
  });

  await check("resume", async () => {
    await durable.resume(paused, "resumed by js");
    await waitFor(paused, Status.Running);
  });

  await check("terminate", async () => {
    await durable.terminate(paused, "stopped by js");
    await waitFor(paused, Status.Terminated);
    finished.push(paused);
  });

  await check("terminate-finished", async () => {
    await durable.terminate(paused, "again"); // 410: accepted as done
  });

  const failing = `js-fail-${run}`;
  await check("rewind", async () => {
    await durable.startNew("Sample_Fail", { instanceId: failing, input: { n: 1 } });
    const failed = await waitFor(failing, Status.Failed);
    await durable.rewind(failing, "retry by js");
    // The activity fails on purpose again: Failed once more, but later.
    const again = await waitUntil(
      failing,
      (s) => s.runtimeStatus === Status.Failed && s.lastUpdatedTime > failed.lastUpdatedTime,
      "Failed again after the rewind",
    );
    finished.push(failing);
    return { output: again.output };
  });

  await check("rewind-not-failed", async () => {
    // 412, which the client turns into its own rejection (a 404 or any
    // other answer would have a different message).
    const message = await rejects(durable.rewind(waiting, "not failed"), /./, "rewind of a Completed instance");
    expect(!/No instance with ID/.test(message), `answered as unknown: ${message}`);
    const s = await durable.getStatus(waiting);
    same(s.runtimeStatus, Status.Completed, "status after a refused rewind");
  });

  await check("suspend-resume-finished", async () => {
    // 410 for a finished instance: the client takes it as done.
    await durable.suspend(paused, "too late");
    await durable.resume(paused, "too late");
    const s = await durable.getStatus(paused);
    same(s.runtimeStatus, Status.Terminated, "still Terminated");
  });

  await check("list-all-pages", async () => {
    const all = await paged.getStatusAll();
    expect(Array.isArray(all), `not an array: ${JSON.stringify(all)}`);
    const ids = all.map((s) => s.instanceId);
    expect(new Set(ids).size === ids.length, `an instance came twice: ${ids}`);
    for (const id of finished) expect(ids.includes(id), `${id} missing from the listing`);
    expect(all.length > 2, `one page only (${all.length})`);
    return { count: all.length };
  });

  await check("list-by-filter-pages", async () => {
    const filter = {
      createdTimeFrom: started,
      createdTimeTo: new Date(Date.now() + 60_000),
      runtimeStatus: [Status.Completed, Status.Terminated],
    };
    const some = await paged.getStatusBy(filter);
    const ids = some.map((s) => s.instanceId);
    for (const s of some) {
      expect(filter.runtimeStatus.includes(s.runtimeStatus), `${s.instanceId} is ${s.runtimeStatus}`);
    }
    for (const id of [created, waiting, paused]) expect(ids.includes(id), `${id} missing`);
    expect(!ids.includes(failing), `${failing} (Failed) listed`);
    expect(new Set(ids).size === ids.length, `an instance came twice: ${ids}`);
    return { count: some.length };
  });

  await check("purge-one", async () => {
    const result = await durable.purgeInstanceHistory(created);
    same(result.instancesDeleted, 1, "instancesDeleted");
    await rejects(durable.getStatus(created), /404/, "status after purge");
    finished.splice(finished.indexOf(created), 1);
  });

  await check("purge-one-unknown", async () => {
    // 404: the client reports nothing deleted.
    same((await durable.purgeInstanceHistory(`js-nobody-${run}`)).instancesDeleted, 0, "instancesDeleted");
  });

  const everything = {
    createdTimeFrom: started,
    createdTimeTo: new Date(Date.now() + 60_000),
    runtimeStatus: [Status.Completed, Status.Failed, Status.Terminated],
  };
  await check("purge-by-filter-needs-master-key", async () => {
    await rejects(durable.purgeInstanceHistoryBy(everything), /401/, "purge with the function key");
  });

  await check("purge-by-filter", async () => {
    // A 404 (nothing matched) would come back as 0, so at least ours count.
    const result = await admin.purgeInstanceHistoryBy(everything);
    expect(
      result.instancesDeleted >= finished.length,
      `instancesDeleted ${result.instancesDeleted}, expected at least ${finished.length}`,
    );
    for (const id of finished) await rejects(durable.getStatus(id), /404/, `status of purged ${id}`);
    return { deleted: result.instancesDeleted };
  });

  await check("wait-for-completion", async () => {
    const id = await durable.startNew("Galaxy_Create");
    const response = await durable.waitForCompletionOrCreateCheckStatusResponse(request, id, {
      timeoutInMilliseconds: 20_000,
      retryIntervalInMilliseconds: 200,
    });
    same(response.status, 200, "status");
    const body = await response.json();
    same(body, (await durable.getStatus(id)).output, "body (the output)");
  });

  await check("wait-for-completion-failed", async () => {
    const id = await durable.startNew("Sample_Fail");
    const response = await durable.waitForCompletionOrCreateCheckStatusResponse(request, id, {
      timeoutInMilliseconds: 20_000,
      retryIntervalInMilliseconds: 200,
    });
    same(response.status, 500, "status");
    same((await response.json()).runtimeStatus, Status.Failed, "runtimeStatus");
  });

  await check("wait-for-completion-times-out", async () => {
    const id = await durable.startNew("Sample_WaitForEvent");
    const response = await durable.waitForCompletionOrCreateCheckStatusResponse(request, id, {
      timeoutInMilliseconds: 1_000,
      retryIntervalInMilliseconds: 200,
    });
    same(response.status, 202, "status");
    const payload = await response.json();
    same(payload.id, id, "id");
    same(response.headers.get("location"), payload.statusQueryGetUri, "Location");
    same(response.headers.get("retry-after"), "10", "Retry-After");
    // The check-status URIs work as given, key included.
    const status = await fetch(payload.statusQueryGetUri);
    same(status.status, 202, "GET statusQueryGetUri");
    same((await status.json()).instanceId, id, "instanceId behind statusQueryGetUri");
    const raised = await fetch(payload.sendEventPostUri.replace("{eventName}", "Approval"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify("via uri"),
    });
    same(raised.status, 202, "POST sendEventPostUri");
    same((await waitFor(id, Status.Completed)).output, "via uri", "output");
  });

  await check("management-payload", async () => {
    const payload = durable.createHttpManagementPayload("some-id");
    same(payload.id, "some-id", "id");
    for (const [name, uri] of Object.entries(payload)) {
      if (name === "id") continue;
      expect(uri.startsWith(`${base}/runtime/webhooks/durabletask/instances/some-id`), `${name}: ${uri}`);
    }
  });

  await check("wrong-key", async () => {
    const wrong = client("d3JvbmcKd3JvbmcK");
    return { error: await rejects(wrong.getStatus(waiting), /401/, "status with a wrong key") };
  });
} catch (e) {
  say({ step, ok: false, error: e?.message ?? String(e) });
  process.exit(1);
}
