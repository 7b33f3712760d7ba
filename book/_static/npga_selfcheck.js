// The book's self-check, read by `python -m npga.book.check_html` (make test): which code
// cells, outputs, tables and equations are wider than the content column, i.e. would make a
// reader scroll sideways. The result goes into <body data-npga-overflow="...">, "0" when none.
(function () {
  function describe(el) {
    var text = (el.textContent || "").replace(/\s+/g, " ").trim().slice(0, 50);
    var cls = (el.className && typeof el.className === "string") ? "." + el.className.split(" ")[0] : "";
    return el.tagName.toLowerCase() + cls + " \"" + text + "\"";
  }
  function check() {
    var column = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
    var right = column.getBoundingClientRect().right;
    var bad = [];
    var sel = "pre, div.cell_output, div.output, table, mjx-container[display=\"true\"], img";
    column.querySelectorAll(sel).forEach(function (el) {
      var scrolls = el.scrollWidth > el.clientWidth + 2 && el.clientWidth > 0;
      var sticksOut = el.getBoundingClientRect().right > right + 2;
      if (scrolls || sticksOut) bad.push(describe(el));
    });
    document.body.setAttribute("data-npga-overflow", bad.length ? bad.length + ": " + bad.slice(0, 5).join(" | ") : "0");
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) {
      mj.startup.promise.then(check, check);
    } else {
      check();
    }
  });
})();
