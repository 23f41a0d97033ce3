// The verifier's verdict on an uploaded object, for the three upload pages.
//
// After the store has the file, the broker's verifier judges it (its events arrive within a
// second under `make run`): verified, or rejected and moved to quarantine. This asks
// GET uploads/verdict?key= until the verdict is in, and shows it on the file's row as
// data-verdict plus a line of text ("verified", or "rejected: the bytes are HTML, not image/png").
(function () {
  "use strict";

  async function verdictOf(base, key, apiKey) {
    const response = await fetch(`${base}uploads/verdict?key=${encodeURIComponent(key)}`,
                                 { headers: apiKey ? { "x-api-key": apiKey } : {} });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) return { status: "unknown", message: body.message || `HTTP ${response.status}` };
    return body;
  }

  /** Show the verdict on `row` (a line added to `into`), asking every `every` ms for up to `timeoutMs`. */
  window.showVerdict = async function (row, into, key, apiKey, { base = "", timeoutMs = 30000, every = 500 } = {}) {
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
        answer = await verdictOf(base, key, apiKey);
      } catch (err) {
        answer = { status: "unknown", message: `could not ask the broker: ${err.message}` };
      }
      if (answer.status === "verified" || answer.status === "rejected" || answer.status === "missing") {
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
