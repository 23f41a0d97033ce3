// fineuploader-broker.js: Fine Uploader S3 (5.16, signature v4) against the upload broker, in a few lines.
//
//   <script src="https://broker.example.com/vendor/fine-uploader/s3.fine-uploader.min.js"></script>
//   <script src="https://broker.example.com/fineuploader-broker.js"></script>
//   const broker = await FineUploaderBroker.connect({ endpoint: "https://broker.example.com",
//                                                     token: session.token, profile: "avatars" });
//   const uploader = new qq.s3.FineUploader(broker.options({
//     element: document.getElementById("uploader"),          // any of Fine Uploader's own options
//     request: { params: { title: "Holiday" } },              // sent as the file's metadata, checked
//     resume: { enabled: true },
//   }));
//   broker.attach(uploader);
//
// options() fills in Fine Uploader's documented S3 options: request.endpoint/accessKey (the store),
// signature.endpoint (the broker, with the session token in the path: /s/<token>/fineuploader/signature),
// objectProperties.key and .bucket as functions (the broker decides each file: POST /fineuploader/key,
// and answers with a server-random key), uploadSuccess, chunking (on for profiles with multipart), and
// failedUploadTextDisplay {mode: "custom"} so the broker's reason is what the person reads. Each file's
// grant token goes back in x-upload-grant (signature.customHeaders as a function of the file id).
//
// resume: a re-added file with a resume record (Fine Uploader keeps it in localStorage) asks the broker
// to continue under its original key (POST /fineuploader/key?resume=<key>); the broker agrees only if
// the store still holds that unfinished upload for the same client and rule, and otherwise says why,
// and the file fails at once.
(function (root) {
  "use strict";

  function connect({ endpoint = "", token, profile = null } = {}) {
    if (!token) return Promise.reject(new Error("FineUploaderBroker.connect needs a session token (POST /sessions)"));
    const base = `${String(endpoint).replace(/\/+$/, "")}/s/${token}`;  // every broker route, with the session
    return fetch(`${base}/fineuploader/config`).then(async (response) => {
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.message || body.error || `the broker answered HTTP ${response.status}`);
      return broker(base, body, profile);
    });
  }

  function broker(base, config, profileOption) {
    let uploader = null;
    let ownParams = {};
    let grants = {};  // file id -> promise of the broker's answer for it
    let tokens = {};  // file id -> grant token
    const fileId = (id) => parseInt(String(id), 10);  // "3.1" (a part of file 3) -> 3
    const profileOf = (id) => (typeof profileOption === "function" ? profileOption(id) : profileOption) ||
      config.defaultProfile || (config.profiles[0] && config.profiles[0].name);
    const profileInfo = (name) => config.profiles.find((p) => p.name === name) || {};

    function need() {
      if (!uploader) throw new Error("call broker.attach(uploader) after creating Fine Uploader");
      return uploader;
    }

    function qqPromise(promise) {
      const q = new qq.Promise();
      promise.then((value) => q.success(value), (error) => q.failure(error.message || String(error)))
        // Fine Uploader's own failure handlers rethrow the reason (a string) once they have shown it.
        .then(null, () => {});
      return q;
    }

    async function askKey(id) {
      const u = need();
      const file = u.getFile(id) || {};
      const params = typeof ownParams === "function" ? ownParams(id) : ownParams;
      const request = { filename: u.getName(id), content_type: file.type || "application/octet-stream",
                        size: u.getSize(id), profile: profileOf(id) };
      if (params && Object.keys(params).length) {
        request.metadata = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, String(v)]));
      }
      // A file Fine Uploader is resuming already has its key, from its resume record (a new file's key
      // is still being asked for here: Fine Uploader holds a promise in its place).
      const known = u.getKey(id);
      const resumeKey = typeof known === "string" &&
        (u.getResumableFilesData() || []).some((record) => record.key === known) ? known : null;
      const url = `${base}/fineuploader/key${resumeKey ? `?resume=${encodeURIComponent(resumeKey)}` : ""}`;
      const response = await fetch(url, { method: "POST", headers: { "content-type": "application/json" },
                                          body: JSON.stringify(request) });
      const grant = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(grant.error || grant.message || `the broker answered HTTP ${response.status}`);
      tokens[id] = grant.grant;
      u.setParams(grant.params, id);  // Cache-Control, Content-Disposition, metadata: what the policy must carry
      u.setAcl(grant.acl, id);
      if (grant.endpoint !== config.endpoint) u.setEndpoint(grant.endpoint, id);
      return grant;
    }

    function grantFor(id) {
      return grants[id] || (grants[id] = askKey(id));
    }

    const headers = (id) => (tokens[fileId(id)] ? { "x-upload-grant": tokens[fileId(id)] } : {});

    return {
      config,

      /** The broker's answer for a file (key, grantId, profile, ...), once asked. */
      grant: (id) => grants[fileId(id)],

      /** Fine Uploader's options: yours, with the broker's S3 settings filled in. */
      options(own = {}) {
        ownParams = (own.request && own.request.params) || {};
        const rule = profileInfo(profileOf(null));
        return {
          ...own,
          request: { ...(own.request || {}), endpoint: config.endpoint, accessKey: config.accessKey, params: {} },
          signature: { ...(own.signature || {}), endpoint: `${base}/fineuploader/signature`, version: 4,
                       customHeaders: headers },
          uploadSuccess: { ...(own.uploadSuccess || {}), endpoint: `${base}/fineuploader/success`,
                           customHeaders: headers },
          objectProperties: {
            ...(own.objectProperties || {}),
            region: config.region,
            host: config.host,  // path-style stores: the host alone, not host/bucket
            bucket: (id) => qqPromise(grantFor(id).then((g) => g.bucket)),
            key: function (id) {  // Fine Uploader calls it on itself
              if (!uploader) uploader = this;  // (attach() is still needed for resumed files: see above)
              return qqPromise(grantFor(id).then((g) => g.key));
            },
          },
          chunking: { ...(own.chunking || {}), enabled: !!rule.multipart, partSize: config.partSize },
          // The broker decides each file before Fine Uploader starts it: a refusal fails the file at
          // once with the broker's reason (Fine Uploader would wait forever on a resumed file's bucket).
          callbacks: { ...(own.callbacks || {}), onUpload: function (id, name) {
            if (!uploader) uploader = this;
            const theirs = own.callbacks && own.callbacks.onUpload;
            const q = new qq.Promise();
            grantFor(id).then(() => {
              const next = theirs ? theirs.call(this, id, name) : null;
              if (next && typeof next.then === "function") next.then((v) => q.success(v), (e) => q.failure(e));
              else q.success(next);
            }, (error) => q.failure({ responseJSON: { error: error.message || String(error) } }))
              .then(null, () => {});  // Fine Uploader rethrows what it has already shown
            return q;
          } },
          failedUploadTextDisplay: own.failedUploadTextDisplay || { mode: "custom" },
        };
      },

      /** Give the helper the uploader made with options() (it reads each file's name, type and size). */
      attach(made) {
        if (made !== uploader) grants = {}, tokens = {};  // a new uploader numbers its files from 0 again
        uploader = made;
        return made;
      },
    };
  }

  root.FineUploaderBroker = { connect };
})(typeof window !== "undefined" ? window : globalThis);
