// The review page: the server's events (GET /reviews/<id>/events) into the page, one aspect at a time.
// Text from the model is only ever set as textContent: nothing it writes can become markup.
"use strict";

(function () {
  const root = document.getElementById("review");
  if (!root) return;
  const status = document.getElementById("status");
  const error = document.getElementById("error");
  const live = document.getElementById("live");
  const opened = performance.now();
  let finished = false;

  function seconds() {
    return ((performance.now() - opened) / 1000).toFixed(1);
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function fill(aspect) {
    const section = document.getElementById("aspect-" + aspect.index);
    if (!section) return;
    const body = section.querySelector(".body");
    body.replaceChildren();
    section.classList.remove("pending");
    section.classList.add("filled");
    section.classList.toggle("missing", aspect.missing);
    section.classList.toggle("declined", aspect.empty && !aspect.missing);
    if (aspect.missing) {
      body.append(element("p", "Not written: the review ended before this aspect.", "note"));
    } else if (aspect.empty) {
      body.append(element("p", "Declined: the model wrote <No related terms>.", "note"));
    } else {
      const list = element("ul");
      for (const item of aspect.items) list.append(element("li", item));
      body.append(list);
    }
  }

  function finish(data) {
    finished = true;
    data.aspects.forEach(fill);
    const table = document.getElementById("lineage");
    table.replaceChildren();
    for (const [key, value] of Object.entries(data.lineage)) {
      const row = element("tr");
      row.append(element("th", key), element("td", String(value)));
      table.append(row);
    }
    const warnings = document.getElementById("warnings");
    warnings.replaceChildren(...data.warnings.map((w) => element("li", w)));
    document.getElementById("finished").hidden = false;
    const declined = data.aspects.filter((a) => a.empty && !a.missing).length;
    const missing = data.aspects.filter((a) => a.missing).length;
    let text = "Done: " + (data.aspects.length - declined - missing) + " aspects written, " + declined + " declined";
    if (missing) text += ", " + missing + " not written";
    if (data.first_aspect_s !== null) text += " · first aspect " + data.first_aspect_s + " s after upload";
    if (data.finished_s !== null) text += ", whole review " + data.finished_s + " s";
    status.textContent = text + ".";
    root.dataset.state = "done";
  }

  function fail(message) {
    finished = true;
    error.textContent = message;
    error.hidden = false;
    status.textContent = "Stopped after " + seconds() + " s.";
    root.dataset.state = "failed";
  }

  const events = new EventSource(root.dataset.events);
  events.addEventListener("started", function () {
    status.textContent = "Reading the paper and writing the review…";
  });
  events.addEventListener("text", function (e) {
    live.textContent += JSON.parse(e.data).text;
    if (status.textContent.startsWith("Reading")) status.textContent = "Writing…";
  });
  events.addEventListener("aspect", function (e) {
    const aspect = JSON.parse(e.data);
    fill(aspect);
    status.textContent = "Writing… " + (aspect.index + 1) + " of 7 aspects done (" + seconds() + " s).";
  });
  events.addEventListener("done", function (e) {
    events.close();
    finish(JSON.parse(e.data));
  });
  events.addEventListener("failed", function (e) {
    events.close();
    fail(JSON.parse(e.data).message);
  });
  events.onerror = function () {
    if (finished) return;
    events.close();
    fail("The connection to the page's server was lost; reload the page to see where the review stands.");
  };
})();
