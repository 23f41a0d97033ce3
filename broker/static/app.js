// The upload page: ask the broker for a presigned POST form, then post the file straight to the store.
//
// The page holds a session token, never an API key: the app backend (make run's demo backend,
// GET demo/session) mints it with POST /sessions. broker.js does the two requests for each file:
// POST /uploads {filename, content_type, size, profile} with Authorization: Bearer -> {url, fields,
// key, ...} or a JSON error whose `message` says why; then the form POST to the store, which answers
// with XML (<Location>, <Key>, <ETag>) or an XML error (<Code>, <Message>).
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

  // ------------------------------------------------------------------ the session and the upload

  const BASE = new URL(".", window.location.href).href.replace(/\/$/, "");  // the broker serves this page

  // The page holds no API key: the app's backend (here make run's demo backend, GET demo/session)
  // calls POST /sessions with the key, server to server, and hands the page a short-lived token.
  let session = null;  // {token, expires_at, user, profiles, broker}
  function currentSession() {
    if (session && Date.parse(session.expires_at) - Date.now() > 60000) return Promise.resolve(session);
    return window.demoSession(BASE).then((body) => {
      session = { ...body, broker: window.Broker({ endpoint: BASE, token: body.token }) };
      showSession(session);
      return session;
    });
  }

  function showSession(s) {
    $("#session").textContent = `${s.client}${s.user ? ` · user ${s.user}` : ""} · until ${new Date(s.expires_at).toLocaleTimeString()}`;
  }

  /** The file's SHA-256 in hex, for files small enough to hash in the page (else null). */
  async function sha256(file) {
    if (!window.crypto || !crypto.subtle || file.size > HASH_LIMIT) return null;
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await file.arrayBuffer()));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function upload(file, row, profile) {
    row.state("asking", "asking the broker…");
    let s;
    try {
      s = await currentSession();
    } catch (err) {
      row.fail("error", "no session", `could not get a session from the app backend: ${err.message}`);
      return;
    }
    let grant = null;
    try {
      // Declared, the digest is bound in the form: a store that checks it refuses any other bytes.
      const stored = await s.broker.upload(file, {
        profile, contentType: contentType(file), sha256: await sha256(file),
        onGrant: (g) => { grant = g; row.state("uploading", "uploading to the store…"); row.progress(0); },
        onProgress: (f) => row.progress(f),
      });
      row.stored(stored.grant, { location: stored.location, etag: stored.etag });
      window.showVerdict(row.el, $(".body", row.el), stored.key, { token: s.token }, { grantId: stored.grant.grant_id }); // not awaited
    } catch (err) {
      if (err.stage === "store" && err.status) {
        row.fail("refused", `refused by the store · ${err.status}`, err.message);
      } else if (err.status) {
        const rule = err.rule ? ` (rule ${err.rule}${err.check ? `, check ${err.check}` : ""})` : "";
        row.fail("denied", `denied by the broker · ${err.status}${rule}`, err.message);
      } else {
        row.fail("error", grant ? "upload failed" : "broker unreachable", err.message);
      }
    }
  }

  // ------------------------------------------------------------------ queue and page wiring

  const queue = [];
  let running = 0;

  function pump() {
    while (running < PARALLEL && queue.length) {
      const job = queue.shift();
      running += 1;
      upload(job.file, job.row, job.profile).finally(() => {
        running -= 1;
        pump();
      });
    }
  }

  function addFiles(fileList) {
    const profile = $("#profile").value.trim();
    for (const file of Array.from(fileList)) {
      queue.push({ file, row: new Row(file), profile });
    }
    pump();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const input = $("#files");
    const drop = $("#drop");
    $("#settings").addEventListener("submit", (event) => event.preventDefault());
    currentSession().then(() => { document.body.dataset.ready = "true"; }, (err) => {
      $("#session").textContent = `no session: ${err.message}`;
      document.body.dataset.ready = "false";
    });
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
