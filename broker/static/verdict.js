// The verifier's verdict on an uploaded object, for the three upload pages.
//
// After the store has the file, the broker's verifier judges it (its events arrive within a
// second under `make run`): verified, or rejected and moved to quarantine. With a grant id and a
// broker that keeps a grant ledger, this asks GET uploads/{grant_id} (issued, uploaded, verified,
// rejected with the failed checks, expired); otherwise GET uploads/verdict?key=. It asks until
// the verdict is in, and shows it on the file's row as data-verdict plus a line of text
// ("the file arrived and passed every check", or "rejected: the bytes are HTML, not image/png").
(function () {
  "use strict";

  const FINAL = ["verified", "rejected", "missing", "expired"];

  // `auth`: {token} (a session token, sent as Authorization: Bearer), or an API key string.
  function headersFor(auth) {
    if (auth && typeof auth === "object") return auth.token ? { authorization: `Bearer ${auth.token}` } : {};
    return auth ? { "x-api-key": auth } : {};
  }

  async function ask(url, apiKey) {
    const response = await fetch(url, { headers: headersFor(apiKey) });
    const body = await response.json().catch(() => ({}));
    return { ok: response.ok, status: response.status, body };
  }

  async function verdictOf(base, key, apiKey, grant) {
    if (grant.id) {
      const answer = await ask(`${base}uploads/${grant.id}`, apiKey);
      if (answer.ok) return answer.body;
      if (answer.status !== 404) return { status: "unknown", message: answer.body.message || `HTTP ${answer.status}` };
      grant.id = null; // no ledger here: ask by key from now on
    }
    const answer = await ask(`${base}uploads/verdict?key=${encodeURIComponent(key)}`, apiKey);
    if (!answer.ok) return { status: "unknown", message: answer.body.message || `HTTP ${answer.status}` };
    return answer.body;
  }

  /** Show the verdict on `row` (a line added to `into`), asking every `every` ms for up to `timeoutMs`. */
  window.showVerdict = async function (row, into, key, apiKey,
                                       { base = "", timeoutMs = 30000, every = 500, grantId = null } = {}) {
    const grant = { id: grantId };
    let line = row.querySelector(".verdict");
    if (!line) {
      line = document.createElement("p");
      line.className = "verdict";
      into.append(line);
    }
    row.dataset.verdict = "pending";
    line.textContent = "checking what landed…";
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      let answer;
      try {
        answer = await verdictOf(base, key, apiKey, grant);
      } catch (err) {
        answer = { status: "unknown", message: `could not ask the broker: ${err.message}` };
      }
      if (FINAL.includes(answer.status)) {
        row.dataset.verdict = answer.status;
        line.textContent = answer.message || answer.status;
        const status = row.querySelector(".status");
        if (status && answer.status !== "verified") status.textContent = "stored, then moved out by the verifier";
        return answer;
      }
      await new Promise((resolve) => setTimeout(resolve, every));
    }
    row.dataset.verdict = "pending";
    line.textContent = "not verified yet (the verifier's sweep will judge it)";
    return { status: "pending" };
  };
})();
