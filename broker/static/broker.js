// broker.js: upload a file through the upload broker from a browser. No dependencies.
//
//   <script src="https://broker.example.com/broker.js"></script>
//   const broker = Broker({ endpoint: "https://broker.example.com", token: session.token });
//   const limits = await broker.limits();            // GET /limits: each profile's sizes and types
//   try {
//     const stored = await broker.upload(file, { profile: "avatars", onProgress: (f) => bar.value = f });
//     console.log(stored.key);                       // where the store keeps it
//   } catch (err) {
//     show(err.message);                             // the broker's reason ("too large: 12 MB, ...")
//   }
//
// `token` is a session token your backend got from POST /sessions (sent as Authorization: Bearer);
// never put an API key in a page. upload() asks POST /uploads for a presigned form, then posts the
// file straight to the store (fetch + FormData; XMLHttpRequest only when onProgress is given, since
// fetch reports no upload progress). A refusal rejects with a BrokerError: `message` is the reason,
// `status`, `check` and `rule` as the broker sent them, `stage` "broker" or "store".
(function (root) {
  "use strict";

  /** An upload the broker denied, the store refused, or that could not be sent. */
  class BrokerError extends Error {
    constructor(message, { status = 0, stage = "broker", check = null, rule = null, code = null, body = null } = {}) {
      super(message);
      this.name = "BrokerError";
      Object.assign(this, { status, stage, check, rule, code, body });
    }
  }

  /** {code, message, key, location, etag} from an S3 XML answer (success or error). */
  function parseS3Xml(text) {
    const out = {};
    if (!text || typeof DOMParser === "undefined") return out;
    const doc = new DOMParser().parseFromString(text, "application/xml");
    if (doc.getElementsByTagName("parsererror").length) return out;
    for (const [field, tag] of [["code", "Code"], ["message", "Message"], ["key", "Key"],
                                ["location", "Location"], ["etag", "ETag"]]) {
      const el = doc.getElementsByTagName(tag)[0];
      if (el) out[field] = el.textContent.trim();
    }
    return out;
  }

  function Broker({ endpoint = "", token = null, headers = {} } = {}) {
    const base = String(endpoint).replace(/\/+$/, "");
    const auth = () => ({ ...headers, ...(token ? { authorization: `Bearer ${token}` } : {}) });

    async function json(path, init = {}) {
      let response;
      try {
        response = await fetch(`${base}${path}`, { ...init, headers: { ...auth(), ...(init.headers || {}) } });
      } catch (err) {
        throw new BrokerError(`could not reach the broker at ${base || location.origin}: ${err.message}`);
      }
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON */ }
      if (!response.ok) {
        const b = body || {};
        throw new BrokerError(b.message || b.error || `the broker answered HTTP ${response.status}`,
          { status: response.status, check: b.check || null, rule: b.rule || null, code: b.error || null, body: b });
      }
      return body;
    }

    /** Post the signed form and the file to the store; resolves {status, text, etag}. */
    function postForm(grant, file, onProgress) {
      const form = new FormData();
      for (const [name, value] of Object.entries(grant.fields)) form.append(name, value);
      form.append("file", file);  // last: the store ignores every field after it
      const unreachable = () => new BrokerError(`could not reach the store at ${grant.url} (does the bucket's ` +
        `CORS allow ${location.origin}?)`, { stage: "store" });
      if (!onProgress) {
        return fetch(grant.url, { method: "POST", body: form }).then(
          async (r) => ({ status: r.status, text: await r.text(), etag: r.headers.get("ETag") }),
          () => { throw unreachable(); });
      }
      return new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", grant.url);
        xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
        xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText, etag: xhr.getResponseHeader("ETag") });
        xhr.onerror = () => reject(unreachable());
        xhr.send(form);
      });
    }

    return {
      BrokerError,

      /** GET /limits: {client, user, session_expires_at, default_profile, profiles: {name: {..., restrictions}}}. */
      limits() {
        return json("/limits");
      },

      /**
       * Ask for a form, then send the file. Options: profile, metadata ({name: value}), sha256 (hex,
       * bound in the form), contentType (default: file.type), onProgress(fraction), onGrant(grant).
       * Resolves {key, location, etag, grant}; rejects with a BrokerError.
       */
      async upload(file, { profile, metadata, sha256, contentType, onProgress, onGrant } = {}) {
        const request = { filename: file.name, content_type: contentType || file.type || "application/octet-stream",
                          size: file.size };
        if (profile) request.profile = profile;
        if (metadata) request.metadata = metadata;
        if (sha256) request.sha256 = sha256;
        const grant = await json("/uploads", { method: "POST", headers: { "content-type": "application/json" },
                                               body: JSON.stringify(request) });
        if (onGrant) onGrant(grant);
        const result = await postForm(grant, file, onProgress);
        const xml = parseS3Xml(result.text);
        if (result.status < 200 || result.status >= 300) {
          throw new BrokerError(xml.code ? `${xml.code}: ${xml.message || "no message"}` : `the store answered HTTP ${result.status}`,
            { status: result.status, stage: "store", code: xml.code || null });
        }
        if (onProgress) onProgress(1);
        const location = xml.location ||
          `${grant.url.replace(/\/$/, "")}/${grant.key.split("/").map(encodeURIComponent).join("/")}`;
        return { key: grant.key, location, etag: xml.etag || result.etag, grant };
      },
    };
  }

  Broker.BrokerError = BrokerError;
  root.Broker = Broker;
})(typeof window !== "undefined" ? window : globalThis);
