// Uppy 6 AwsS3 through the Companion protocol, with the upload broker as the "Companion".
//
// No glue: the page gets a session from its app backend (make run's demo backend, GET demo/session,
// which calls POST /sessions with the API key), and Uppy's documented option does the rest:
//
//   companionEndpoint: `${BROKER}/s/${session.token}`     // the token rides in the path
//   restrictions: (await broker.limits()).profiles[profile].restrictions   // GET /limits, as it is
//
// The broker puts its reason in the JSON body and in the status line, so Uppy 6 shows
// "Companion request failed: <the broker's reason>". See docs/FRONTENDS.md.
"use strict";

(function () {
  const BROKER = new URL(".", window.location.href).href.replace(/\/$/, "");
  const PART_SIZE = 5 * 1024 * 1024;  // Uppy's minimum part size; larger files go multipart
  const $ = (selector) => document.querySelector(selector);
  const results = {};  // Uppy file id (or file name) -> {state, reason, key, name}
  window.uppyResults = results;

  function show(id, name, state, detail) {
    const result = results[id] || (results[id] = { name });
    result.state = state;
    if (state === "failed") result.reason = detail; else if (detail) result.key = detail;
    let li = document.querySelector(`li[data-id="${CSS.escape(id)}"]`);
    if (!li) {
      li = document.createElement("li");
      li.className = "upload";
      li.dataset.id = id;
      li.innerHTML = '<div class="row"><span class="name"></span><span class="status"></span></div><p class="detail"></p>';
      li.querySelector(".name").textContent = name;
      $("#uploads").prepend(li);
    }
    li.dataset.state = state;
    li.querySelector(".status").textContent = state;
    li.querySelector(".detail").textContent = detail || "";
    return li;
  }

  async function start() {
    const session = await window.demoSession(BROKER);
    const broker = window.Broker({ endpoint: BROKER, token: session.token });
    const limits = await broker.limits();
    const profile = () => $("#profile").value.trim() || limits.default_profile;
    const restrictions = () => (limits.profiles[profile()] || {}).restrictions || {};

    const uppy = new Uppy.Uppy({ autoProceed: true, meta: { profile: profile() }, restrictions: restrictions() })
      .use(Uppy.Dashboard, { inline: true, target: "#dashboard", height: 320, proudlyDisplayPoweredByUppy: false })
      .use(Uppy.AwsS3, {
        companionEndpoint: `${BROKER}/s/${session.token}`,
        shouldUseMultipart: (file) => (file.size || 0) > PART_SIZE,
        allowedMetaFields: ["profile"],
      });
    for (const name of ["input", "change"]) {
      $("#profile").addEventListener(name, () => {
        uppy.setMeta({ profile: profile() });
        uppy.setOptions({ restrictions: restrictions() });
      });
    }

    uppy.on("file-added", (file) => show(file.id, file.name, "uploading"));
    uppy.on("upload-success", (file, response) => {
      const key = (response && response.body && response.body.key) || "";
      const li = show(file.id, file.name, "done", key);
      if (key) window.showVerdict(li, li, key, { token: session.token }, { base: BROKER + "/" });
    });
    uppy.on("upload-error", (file, error) => {
      if (file) show(file.id, file.name, "failed", error && error.message ? error.message : String(error));
    });
    uppy.on("restriction-failed", (file, error) => {  // refused in the page, from GET /limits
      if (file) show(file.id || file.name, file.name, "failed", error.message);
    });
    window.uppy = uppy;
    $("#session").textContent = `${session.client} · ${session.user || "no user"} · until ${new Date(session.expires_at).toLocaleTimeString()}`;
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((err) => {
      $("#session").textContent = `no session: ${err.message}`;
      document.body.dataset.ready = "false";
    });
  });
})();
