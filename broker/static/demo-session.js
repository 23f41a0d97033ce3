// The example pages' session: the page holds no API key; its app backend (here make run's demo
// backend, GET demo/session) calls POST /sessions with the key, server to server, and hands the page
// a short-lived token. demoSession(base) resolves that answer ({token, expires_at, client, user}) or
// rejects with an Error saying why.
(function () {
  "use strict";

  window.demoSession = async function demoSession(base) {
    const response = await fetch(`${base}/demo/session`);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(response.status === 404
        ? "no app backend here mints sessions (make run serves one at demo/session; see docs/FRONTENDS.md)"
        : body.message || `the app backend answered HTTP ${response.status}`);
    }
    return body;
  };
})();
