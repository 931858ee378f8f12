// Kakehashi console: the pages work without this script. It records
// script errors, failed loads, Content-Security-Policy violations and
// console errors on the <html> element (data-console-errors), where the
// browser tests read them, and keeps a form from being sent twice.
(function () {
  "use strict";
  var root = document.documentElement;
  var seen = [];
  function note(text) {
    seen.push(String(text));
    root.setAttribute("data-console-errors", JSON.stringify(seen));
  }
  root.setAttribute("data-console-js", "loaded");
  window.addEventListener("error", function (e) {
    var target = e.target;
    if (target && target !== window && (target.src || target.href)) {
      note("load failed: " + (target.src || target.href));
    } else {
      note("error: " + e.message);
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    note("unhandled rejection: " + e.reason);
  });
  document.addEventListener("securitypolicyviolation", function (e) {
    note("csp: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline"));
  });
  var originalError = console.error;
  console.error = function () {
    note("console.error: " + Array.prototype.join.call(arguments, " "));
    return originalError.apply(console, arguments);
  };
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.getAttribute("data-sent") === "yes") {
      e.preventDefault();
      return;
    }
    form.setAttribute("data-sent", "yes");
  });
})();
