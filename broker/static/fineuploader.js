// Fine Uploader S3 5.16.2 (v4 signatures) configured against the upload broker.
//
// 1. GET  /fineuploader/config   -> store endpoint, host, bucket, region, the broker's access key id
// 2. per file, objectProperties.key/bucket call POST /fineuploader/key: the broker decides the file
//    and returns a server-random key, the params and ACL Fine Uploader must send, and a grant token
// 3. every signature and upload-success request carries x-api-key and the file's grant token
//    (signature.customHeaders / uploadSuccess.customHeaders as functions of the file id)
// The broker refuses anything it did not grant; its reason arrives as {"error": "..."}, which Fine
// Uploader passes to onError, so it is shown next to the file.
"use strict";

(function () {
  const BROKER = window.location.origin;
  const $ = (selector) => document.querySelector(selector);
  const grants = {};      // file id -> promise of the broker's answer for that file
  const tokens = {};      // file id -> grant token (sent back in x-upload-grant)
  const grantIds = {};    // file id -> grant id (GET uploads/{grant_id}: the file's status)
  const results = {};     // file id -> {state, reason, key}, read by tests and the list below
  window.fineUploaderResults = results;
  let config = null;
  let uploader = null;

  function apiKey() { return $("#api-key").value.trim(); }
  function profile() { return $("#profile").value; }

  function brokerHeaders(id) {
    // Fine Uploader calls this with the file id, or "id.partIndex" for the signature of a part.
    const fileId = parseInt(String(id), 10);
    const headers = { "x-api-key": apiKey() };
    if (tokens[fileId]) headers["x-upload-grant"] = tokens[fileId];
    return headers;
  }

  async function brokerJson(path, options) {
    const response = await fetch(BROKER + path, options);
    let body = {};
    try { body = await response.json(); } catch (e) { /* not JSON: use the status */ }
    if (!response.ok) {
      const reason = body.error && body.error !== "denied" && body.invalid ? body.error : (body.message || body.error);
      throw new Error(reason || `the broker answered ${response.status}`);
    }
    return body;
  }

  function toQqPromise(promise) {
    const qqPromise = new qq.Promise();
    promise.then((value) => qqPromise.success(value), (error) => qqPromise.failure(error.message || String(error)));
    return qqPromise;
  }

  // The broker's decision for one file, asked once and shared by the key and bucket functions.
  function grantFor(id) {
    if (!grants[id]) {
      const file = uploader.getFile(id);
      grants[id] = brokerJson("/fineuploader/key", {
        method: "POST",
        headers: { "content-type": "application/json", "x-api-key": apiKey() },
        body: JSON.stringify({
          filename: uploader.getName(id), content_type: file.type || "application/octet-stream",
          size: uploader.getSize(id), profile: profile(),
        }),
      }).then((grant) => {
        tokens[id] = grant.grant;
        grantIds[id] = grant.grantId;
        uploader.setParams(grant.params, id);   // Cache-Control, Content-Disposition, metadata...
        uploader.setAcl(grant.acl, id);
        if (grant.endpoint !== config.endpoint) uploader.setEndpoint(grant.endpoint, id);
        show(id, { key: grant.key, status: "signing" });
        return grant;
      }).catch((error) => {
        show(id, { state: "failed", reason: error.message });
        throw error;
      });
    }
    return grants[id];
  }

  // ------------------------------------------------------------------ the list of files

  function row(id) {
    let li = document.querySelector(`li[data-id="${id}"]`);
    if (!li) {
      li = document.createElement("li");
      li.className = "upload";
      li.dataset.id = String(id);
      li.dataset.state = "asking";
      li.innerHTML = '<div class="row"><span class="name"></span><span class="status"></span></div>' +
                     '<p class="detail"></p>';
      li.querySelector(".name").textContent = uploader.getName(id);
      $("#uploads").prepend(li);
    }
    return li;
  }

  function show(id, { state, status, reason, key }) {
    const li = row(id);
    const result = results[id] || (results[id] = { state: "asking", name: uploader.getName(id) });
    if (key) result.key = key;
    if (reason && !result.reason) result.reason = reason;
    if (state && result.state !== "failed") result.state = state;
    li.dataset.state = result.state;
    li.querySelector(".status").textContent = status || result.state;
    li.querySelector(".detail").textContent = result.state === "failed" ? result.reason || "failed" : result.key || "";
  }

  // ------------------------------------------------------------------ Fine Uploader

  function build() {
    const rule = config.profiles.find((p) => p.name === profile()) || config.profiles[0];
    uploader = new qq.s3.FineUploaderBasic({
      autoUpload: true,
      request: { endpoint: config.endpoint, accessKey: config.accessKey },
      signature: { endpoint: BROKER + "/fineuploader/signature", version: 4, customHeaders: brokerHeaders },
      uploadSuccess: { endpoint: BROKER + "/fineuploader/success", customHeaders: brokerHeaders },
      objectProperties: {
        region: config.region,
        host: config.host,  // path-style stores: the host alone, not host/bucket
        bucket: (id) => toQqPromise(grantFor(id).then((g) => g.bucket)),
        key: (id) => toQqPromise(grantFor(id).then((g) => g.key)),
      },
      chunking: { enabled: rule.multipart, partSize: config.partSize },
      retry: { enableAuto: false },
      callbacks: {
        onSubmitted: (id) => show(id, { status: "asking the broker" }),
        onProgress: (id, name, loaded, total) => {
          if (results[id] && results[id].state !== "failed") {
            show(id, { state: "uploading", status: `${Math.floor((100 * loaded) / Math.max(total, 1))}%` });
          }
        },
        onComplete: (id, name, response) => {
          if (response && response.success) {
            show(id, { state: "done", status: "stored" });
            const li = row(id);
            window.showVerdict(li, li, uploader.getKey(id), apiKey(), { base: BROKER + "/", grantId: grantIds[id] });
          }
        },
        onError: (id, name, reason) => {
          if (id !== null && id !== undefined) show(id, { state: "failed", reason: reason || "failed" });
          else $("#notice").textContent = reason, $("#notice").hidden = false;
        },
      },
    });
  }

  async function start() {
    try {
      config = await brokerJson("/fineuploader/config", { headers: { "x-api-key": apiKey() } });
    } catch (error) {
      $("#notice").textContent = `Cannot read the broker's configuration: ${error.message}`;
      $("#notice").hidden = false;
      return;
    }
    const select = $("#profile");
    select.replaceChildren(...config.profiles.map((p) => {
      const option = document.createElement("option");
      option.value = p.name;
      option.textContent = `${p.name}${p.multipart ? " (chunked)" : ""}`;
      return option;
    }));
    select.value = config.defaultProfile || config.profiles[0].name;
    build();
    window.fineUploader = uploader;
    document.body.dataset.ready = "true";
  }

  $("#profile").addEventListener("change", build);  // chunking follows the profile's multipart flag
  $("#api-key").addEventListener("change", start);
  $("#files").addEventListener("change", (event) => {
    uploader.addFiles(Array.from(event.target.files));
    event.target.value = "";
  });
  start();
})();
