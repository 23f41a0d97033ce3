// Uppy 6 AwsS3 through the Companion protocol, with the upload broker as the "Companion".
//
// Uppy 6's Companion client calls fetch(`${companionEndpoint}/s3/...`) with no way to add headers,
// and reports a failed call as "Companion request failed: <statusText>". The small fetch wrapper
// below does the two things the page needs: it adds x-api-key to requests for the broker (and
// nothing else), and turns the broker's JSON {"message"} into the status text, so the broker's
// reason is what Uppy shows. Pages that authenticate with a same-origin cookie need no wrapper
// for the first part. See docs/FRONTENDS.md.
"use strict";

(function () {
  const BROKER = window.location.origin;
  const PART_SIZE = 5 * 1024 * 1024;  // Uppy's minimum part size; larger files go multipart
  const $ = (selector) => document.querySelector(selector);
  const results = {};  // Uppy file id -> {state, reason, key, name}
  window.uppyResults = results;

  const nativeFetch = window.fetch.bind(window);
  window.fetch = async function brokerFetch(input, init) {
    const url = typeof input === "string" ? input : input.url;
    if (!url.startsWith(`${BROKER}/s3/`)) return nativeFetch(input, init);
    const options = { ...(init || {}) };
    const headers = new Headers(options.headers || {});
    headers.set("x-api-key", $("#api-key").value.trim());
    options.headers = headers;
    const response = await nativeFetch(input, options);
    if (response.ok) {
      response.clone().json().then(rememberGrant, () => {});  // /s3/params and /s3/multipart name the grant
      return response;
    }
    let message = response.statusText;
    try {
      const body = await response.clone().json();
      if (body && typeof body.message === "string") message = body.message;
    } catch (e) { /* not JSON: keep the status text */ }
    const statusText = message.replace(/[^\t\x20-\x7e]/g, "?").slice(0, 500);
    return new Response(await response.text(), { status: response.status, statusText, headers: response.headers });
  };

  const grantIds = {};  // object key -> grant id (GET uploads/{grant_id}: the file's status)
  function rememberGrant(body) {
    const key = body && (body.key || (body.fields && body.fields.key));
    if (key && body.grant_id) grantIds[key] = body.grant_id;
  }

  function show(file, state, detail) {
    const result = results[file.id] || (results[file.id] = { name: file.name });
    result.state = state;
    if (state === "failed") result.reason = detail; else if (detail) result.key = detail;
    let li = document.querySelector(`li[data-id="${CSS.escape(file.id)}"]`);
    if (!li) {
      li = document.createElement("li");
      li.className = "upload";
      li.dataset.id = file.id;
      li.innerHTML = '<div class="row"><span class="name"></span><span class="status"></span></div><p class="detail"></p>';
      li.querySelector(".name").textContent = file.name;
      $("#uploads").prepend(li);
    }
    li.dataset.state = state;
    li.querySelector(".status").textContent = state;
    li.querySelector(".detail").textContent = detail || "";
  }

  const uppy = new Uppy.Uppy({ autoProceed: true })
    .use(Uppy.Dashboard, { inline: true, target: "#dashboard", height: 320, proudlyDisplayPoweredByUppy: false })
    .use(Uppy.AwsS3, {
      companionEndpoint: BROKER,
      shouldUseMultipart: (file) => (file.size || 0) > PART_SIZE,
      allowedMetaFields: ["profile", "size"],  // the only meta the broker reads besides name and type
    });

  uppy.on("file-added", (file) => {
    // The declared size lets the broker refuse an oversized file with a reason before any byte
    // moves; the signed content-length-range (or the multipart completion check) enforces it.
    uppy.setFileMeta(file.id, { profile: $("#profile").value.trim(), size: String(file.size) });
    show(file, "uploading");
  });
  uppy.on("upload-success", (file, response) => {
    const key = (response && response.body && response.body.key) || "";
    show(file, "done", key);
    const li = document.querySelector(`li[data-id="${CSS.escape(file.id)}"]`);
    if (key && li) {
      window.showVerdict(li, li, key, $("#api-key").value.trim(), { base: BROKER + "/", grantId: grantIds[key] });
    }
  });
  uppy.on("upload-error", (file, error) => {
    if (file) show(file, "failed", error && error.message ? error.message : String(error));
  });

  window.uppy = uppy;
  document.body.dataset.ready = "true";
})();
