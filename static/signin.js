/* The sign-in page (templates/signin/confirm.html): move the token from the
 * link's fragment into the form, and out of the address bar and history.
 * Browsers never send a fragment, so the token reaches the console only in
 * the body of this form's POST, never in a URL that gets logged.
 */
(function () {
  "use strict";
  var form = document.getElementById("signin-form");
  if (!form) return;
  var token = window.location.hash.replace(/^#/, "");
  if (token) {
    form.elements.token.value = token;
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  if (!form.elements.token.value) {
    document.getElementById("signin-incomplete").hidden = false;
    form.querySelector("button[type=submit]").disabled = true;
  }
})();
