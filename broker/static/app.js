// The upload page: ask the broker for a presigned POST form, then post the file straight to the store.
//
// For each file: POST /uploads {filename, content_type, size, profile} with x-api-key -> 200
// {url, fields, key, ...} or a JSON error whose `message` says why; then a multipart POST to `url`
// with every field as a plain form field and `file` last (XMLHttpRequest, for upload progress).
// The store answers 201 with XML (<Location>, <Key>, <ETag>) or an XML error (<Code>, <Message>).
"use strict";

(function () {
  const PARALLEL = 3; // files uploading at once; the rest wait their turn
  const HASH_LIMIT = 100 * 1000 * 1000; // bytes: larger files are not read into the page to hash them

  // Media types for files the browser leaves untyped (File.type is "" for many extensions).
  const TYPES = {
    png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp",
    heic: "image/heic", pdf: "application/pdf", txt: "text/plain", csv: "text/csv",
    docx: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    mp4: "video/mp4", mov: "video/quicktime", webm: "video/webm",
  };

  const $ = (selector, root) => (root || document).querySelector(selector);

  /** "5 MiB", "12 MB", "830 bytes": the same units the broker's messages use. */
  function humanSize(n) {
    const units = [["GiB", 1024 ** 3], ["GB", 1e9], ["MiB", 1024 ** 2], ["MB", 1e6], ["KiB", 1024], ["kB", 1e3]];
    for (const [unit, size] of units) {
      if (n >= size && n % size === 0) return `${n / size} ${unit}`;
    }
    for (const [unit, size] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
      if (n >= size) return `${(n / size).toFixed(1)} ${unit}`;
    }
    return `${n} bytes`;
  }

  /** The media type to declare for a file: the browser's, else one guessed from the extension. */
  function contentType(file) {
    if (file.type) return file.type;
    const ext = (file.name.split(".").pop() || "").toLowerCase();
    return TYPES[ext] || "application/octet-stream";
  }

  /** {code, message, key, location, etag} from an S3 XML response body (success or error). */
  function parseS3Xml(text) {
    const out = {};
    if (!text) return out;
    const doc = new DOMParser().parseFromString(text, "application/xml");
    if (doc.getElementsByTagName("parsererror").length) return out;
    for (const [field, tag] of [["code", "Code"], ["message", "Message"], ["key", "Key"],
                                ["location", "Location"], ["etag", "ETag"]]) {
      const el = doc.getElementsByTagName(tag)[0];
      if (el) out[field] = el.textContent.trim();
    }
    return out;
  }

  // ------------------------------------------------------------------ one file's row in the list

  class Row {
    constructor(file) {
      this.el = $("#upload-item").content.firstElementChild.cloneNode(true);
      this.el.dataset.file = file.name;
      $(".name", this.el).textContent = file.name;
      $(".meta", this.el).textContent = `${humanSize(file.size)} · ${contentType(file)}`;
      const thumb = $(".thumb", this.el);
      const label = () => { thumb.textContent = (file.name.split(".").pop() || "file").slice(0, 4).toUpperCase(); };
      if (file.type.startsWith("image/") && file.size < 20e6) {
        const img = document.createElement("img");
        img.alt = "";
        img.src = URL.createObjectURL(file);
        img.onload = () => URL.revokeObjectURL(img.src);
        img.onerror = () => { URL.revokeObjectURL(img.src); label(); };
        thumb.appendChild(img);
      } else {
        label();
      }
      this.state("waiting", "waiting…");
      $("#uploads").append(this.el);
    }

    state(state, status) {
      this.el.dataset.state = state;
      $(".status", this.el).textContent = status;
    }

    progress(fraction) {
      const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
      $(".bar", this.el).style.width = `${pct}%`;
      $(".progress", this.el).setAttribute("aria-valuenow", String(pct));
      $(".percent", this.el).textContent = `${pct}%`;
    }

    fail(state, status, message) {
      this.state(state, status);
      $(".bar", this.el).style.width = ""; // the stylesheet shows a full, faded bar
      $(".percent", this.el).textContent = "";
      const p = $(".message", this.el);
      p.textContent = message;
      p.hidden = false;
    }

    stored(grant, answer) {
      this.progress(1);
      this.state("stored", "stored");
      $(".key", this.el).textContent = grant.key;
      const location = answer.location || `${grant.url.replace(/\/$/, "")}/${grant.key.split("/").map(encodeURIComponent).join("/")}`;
      const link = $(".location", this.el);
      link.href = location;
      link.textContent = location;
      link.title = "The object is private: opening it needs the store's credentials.";
      $(".etag", this.el).textContent = answer.etag || "—";
      $(".result", this.el).hidden = false;
    }
  }

  // ------------------------------------------------------------------ the two requests

  /** The file's SHA-256 in hex, for files small enough to hash in the page (else null). */
  async function sha256(file) {
    if (!window.crypto || !crypto.subtle || file.size > HASH_LIMIT) return null;
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await file.arrayBuffer()));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** Ask the broker for a form; resolves {ok, status, body}. */
  async function askBroker(file, apiKey, profile) {
    const request = { filename: file.name, content_type: contentType(file), size: file.size };
    if (profile) request.profile = profile;
    // Declared, the digest is bound in the form: a store that checks it refuses any other bytes.
    const digest = await sha256(file);
    if (digest) request.sha256 = digest;
    const headers = { "content-type": "application/json" };
    if (apiKey) headers["x-api-key"] = apiKey;
    const response = await fetch("uploads", { method: "POST", headers, body: JSON.stringify(request) });
    let body = {};
    try {
      body = await response.json();
    } catch (_) {
      body = { message: `the broker answered ${response.status} without a JSON body` };
    }
    return { ok: response.ok, status: response.status, body };
  }

  /** Post the form to the store with progress; resolves {status, text, etag}. */
  function postToStore(grant, file, onProgress) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      for (const [name, value] of Object.entries(grant.fields)) form.append(name, value);
      form.append("file", file); // last: the store ignores every field after it
      const xhr = new XMLHttpRequest();
      xhr.open("POST", grant.url);
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      };
      xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText,
                                   etag: xhr.getResponseHeader("ETag") });
      xhr.onerror = () => reject(new Error(
        `could not reach the store at ${grant.url} (is it running, and does the bucket's CORS allow ${location.origin}?)`));
      xhr.send(form);
    });
  }

  /** Why the broker said no, in one readable sentence. */
  function brokerReason(status, body) {
    const message = body.message || body.error || `HTTP ${status}`;
    if (status === 401) return `${message} (check the API key)`;
    return message;
  }

  async function upload(file, row, apiKey, profile) {
    row.state("asking", "asking the broker…");
    let answer;
    try {
      answer = await askBroker(file, apiKey, profile);
    } catch (err) {
      row.fail("error", "broker unreachable", `could not reach the broker: ${err.message}`);
      return;
    }
    if (!answer.ok) {
      const rule = answer.body.rule ? ` (rule ${answer.body.rule}${answer.body.check ? `, check ${answer.body.check}` : ""})` : "";
      row.fail("denied", `denied by the broker · ${answer.status}${rule}`, brokerReason(answer.status, answer.body));
      return;
    }
    const grant = answer.body;
    row.state("uploading", "uploading to the store…");
    row.progress(0);
    let result;
    try {
      result = await postToStore(grant, file, (f) => row.progress(f));
    } catch (err) {
      row.fail("error", "upload failed", err.message);
      return;
    }
    const xml = parseS3Xml(result.text);
    if (result.status >= 200 && result.status < 300) {
      row.stored(grant, { location: xml.location, etag: xml.etag || result.etag });
      window.showVerdict(row.el, $(".body", row.el), grant.key, apiKey, { grantId: grant.grant_id }); // not awaited
    } else {
      const what = xml.code ? `${xml.code}: ${xml.message || "no message"}` : `HTTP ${result.status}`;
      row.fail("refused", `refused by the store · ${result.status}`, what);
    }
  }

  // ------------------------------------------------------------------ queue and page wiring

  const queue = [];
  let running = 0;

  function pump() {
    while (running < PARALLEL && queue.length) {
      const job = queue.shift();
      running += 1;
      upload(job.file, job.row, job.apiKey, job.profile).finally(() => {
        running -= 1;
        pump();
      });
    }
  }

  function addFiles(fileList) {
    const apiKey = $("#api-key").value.trim();
    const profile = $("#profile").value.trim();
    for (const file of Array.from(fileList)) {
      queue.push({ file, row: new Row(file), apiKey, profile });
    }
    pump();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const input = $("#files");
    const drop = $("#drop");
    $("#settings").addEventListener("submit", (event) => event.preventDefault());
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = ""; // choosing the same file again uploads it again
    });
    for (const name of ["dragenter", "dragover"]) {
      drop.addEventListener(name, (event) => {
        event.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const name of ["dragleave", "dragend"]) {
      drop.addEventListener(name, () => drop.classList.remove("over"));
    }
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
    });
    // A file dropped beside the zone must not replace the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  });
})();
