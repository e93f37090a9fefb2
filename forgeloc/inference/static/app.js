// forgeloc web page: upload a photo, show the verdict, the heatmap over it and one panel per cue.
// No libraries, works offline; every text from the server is set with textContent (never as HTML).
"use strict";

(function () {
  var $ = function (id) { return document.getElementById(id); };
  var dropZone = $("drop-zone"), fileInput = $("file-input"), statusEl = $("status"), errorEl = $("error");
  var busyEl = $("busy"), resultEl = $("result"), opacity = $("opacity"), layer = $("overlay-layer");
  var BUSY_MESSAGE = "busy: one prediction at a time; try again when it finishes, or cancel it";
  var VERDICT_CLASSES = ["v-clear", "v-inconclusive", "v-likely", "v-uncalibrated"];
  var POLL_MS = 250;
  var busy = false;
  var modelLabel = "";
  // The prediction in progress: its job id (a random handle the server tracks it by), the poll timer,
  // [time, windows done] when the first windows were seen (the ETA's start), and the fetch's aborter.
  var job = null;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = false;
    statusEl.textContent = "";
  }

  function clearError() {
    errorEl.textContent = "";
    errorEl.hidden = true;
  }

  function showBusy() {
    busyEl.textContent = BUSY_MESSAGE;
    busyEl.hidden = false;
  }

  function clearBusy() {
    busyEl.textContent = "";
    busyEl.hidden = true;
  }

  function applyOpacity() {
    layer.style.opacity = String(Number(opacity.value) / 100);
    $("opacity-value").textContent = opacity.value + " %";
  }

  function percent(x) {
    var p = 100 * x;
    return (p > 0 && p < 0.01 ? "<0.01" : p.toFixed(2)) + " %";
  }

  function fillFacts(dl, rows) {
    dl.textContent = "";
    rows.forEach(function (row) {
      dl.appendChild(el("dt", "", row[0]));
      dl.appendChild(el("dd", "", row[1]));
    });
  }

  function setVerdict(node, text, cls) {
    VERDICT_CLASSES.forEach(function (c) { node.classList.remove(c); });
    node.textContent = text || "";
    if (cls) { node.classList.add(cls); }
  }

  // The previous result disappears as soon as a new photo is sent: nothing stale stays on screen.
  function clearResult() {
    resultEl.hidden = true;
    ["overlay-photo", "overlay-layer", "heatmap"].forEach(function (id) { $(id).removeAttribute("src"); });
    ["download-mask", "download-heatmap"].forEach(function (id) { $(id).setAttribute("href", "#"); });
    ["result-name", "result-model", "score", "fraction", "size", "mode-used", "threshold-text"].forEach(
      function (id) { $(id).textContent = ""; });
    setVerdict($("verdict"), "", null);
    $("custody").textContent = "";
    $("cues").textContent = "";
    $("cues-section").hidden = true;
  }

  function cuePanel(panel) {
    var box = el("section", "cue");
    box.dataset.cue = panel.name;
    var title = el("h4", "", panel.name + " ");
    var kind = panel.kind_label + (panel.fused ? " · fused into the heatmap" : "");
    title.appendChild(el("span", panel.kind === "visual_aid" ? "kind aid" : "kind", "(" + kind + ")"));
    box.appendChild(title);
    if (!panel.applicable) {
      box.appendChild(el("p", "na", "not applicable: " + (panel.reason || "no reason given")));
    } else if (panel.kind === "facts") {
      if (panel.facts.length) {
        var dl = el("dl", "facts");
        fillFacts(dl, panel.facts);
        box.appendChild(dl);
      } else {
        box.appendChild(el("p", "na", "no facts recorded"));
      }
    } else if (panel.image) {
      var img = el("img", "cue-map");
      img.alt = panel.name + " map";
      img.loading = "lazy";
      img.src = panel.image;
      img.addEventListener("click", function () { img.classList.toggle("big"); });
      box.appendChild(img);
    } else {
      box.appendChild(el("p", "na", "no map"));
    }
    if (panel.score !== null && panel.score !== undefined) {
      var score = el("p", "", "score ");
      score.appendChild(el("b", "cue-score", panel.score.toFixed(3)));
      box.appendChild(score);
    } else if (panel.kind === "visual_aid" && panel.applicable) {
      box.appendChild(el("p", "", "no score: a visual aid is never used for the score"));
    }
    if (panel.applicable && panel.reason) { box.appendChild(el("p", "na", panel.reason)); }
    [["What to look for: ", panel.look_for], ["What to ignore: ", panel.ignore]].forEach(function (pair) {
      if (!pair[1]) { return; }
      var p = el("p", "guide");
      p.appendChild(el("b", "", pair[0]));
      p.appendChild(document.createTextNode(pair[1]));
      box.appendChild(p);
    });
    return box;
  }

  function show(result) {
    $("result-name").textContent = result.name;
    $("result-model").textContent = "Model: " + (result.model_label || modelLabel);
    setVerdict($("verdict"), result.verdict_text, result.verdict_class);
    $("score").textContent = result.score.toFixed(3);
    $("fraction").textContent = percent(result.tampered_fraction);
    $("size").textContent = result.width + " × " + result.height;
    $("mode-used").textContent = result.mode + (result.windows > 1 ? " (" + result.windows + " windows)" : "");
    $("overlay-photo").src = result.images.photo;
    layer.src = result.images.layer;
    $("heatmap").src = result.images.heatmap;
    var mark = $("threshold-mark");
    mark.style.left = "calc(" + (100 * result.threshold).toFixed(1) + "% - 1px)";
    $("threshold-text").textContent = "mask threshold " + result.threshold;
    var mask = $("download-mask"), heat = $("download-heatmap");
    mask.href = result.images.mask;
    mask.download = result.stem + "_predmask.png";  // as forgeloc predict names it (not ground truth)
    heat.href = result.images.heatmap;
    heat.download = result.stem + "_heatmap.png";
    var c = result.custody;
    var streams = { jpeg_dct: "the file's JPEG DCT coefficients", pixels: "decoded pixels" };
    fillFacts($("custody"), [
      ["SHA-256", c.sha256 + " (" + c.sha256_of + ")"],
      ["size", c.bytes.toLocaleString("en") + " bytes"],
      ["dimensions", c.width + " × " + c.height + " px"],
      ["mode", c.mode_reason],
      ["model read", c.streams.map(function (s) { return streams[s] || s; }).join(", ")],
      ["heatmap fuses", c.fused.join(", ") || "nothing"]
    ]);
    var cues = $("cues");
    cues.textContent = "";
    (result.cue_panels || []).forEach(function (panel) { cues.appendChild(cuePanel(panel)); });
    $("cues-section").hidden = !(result.cue_panels && result.cue_panels.length);
    applyOpacity();
    resultEl.hidden = false;
    statusEl.textContent = "Analysed " + result.name + " in " + result.elapsed_s.toFixed(1) + " s (threshold " +
      result.threshold + ").";
  }

  function newJobId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function duration(s) {
    return s < 90 ? Math.max(1, Math.round(s)) + " s" : Math.round(s / 60) + " min";
  }

  // "window 12 of 81 · about 20 s left (estimate)": the pace since the first windows were seen.
  function windowsText(current, p) {
    var text = "window " + p.windows_done + " of " + p.windows_total;
    var now = Date.now();
    if (!current.first) {
      if (p.windows_done > 0) { current.first = [now, p.windows_done]; }
    } else if (p.windows_done > current.first[1] && now - current.first[0] >= 1000) {
      var pace = (now - current.first[0]) / 1000 / (p.windows_done - current.first[1]);
      text += " · about " + duration(pace * (p.windows_total - p.windows_done)) + " left (estimate)";
    }
    return text;
  }

  function progressText(current, p) {
    if (p.state === "cancelling") { return "cancelling …"; }
    if (p.state === "queued") {
      return p.ahead > 0 ? "queued: waiting for " + p.ahead + " other prediction(s) to finish" : "starting …";
    }
    if (p.state !== "running") { return "sending the photo …"; }
    if (p.stage === "cues") { return "training-free cues: " + p.cues_done + " of " + p.cues_total + " done"; }
    return p.windows_total > 0 ? windowsText(current, p) : "analysing …";
  }

  function showProgress(current, p) {
    if (job !== current) { return; }  // a late answer about a prediction that has ended
    var bar = $("progress"), box = $("progress-box");
    if (p.state === "running" && p.windows_total > 0) {
      bar.max = p.windows_total;
      bar.value = p.windows_done;
    } else {
      bar.removeAttribute("value");  // indeterminate until the windows start
    }
    box.dataset.state = p.state;
    box.dataset.windowsDone = String(p.windows_done || 0);
    box.dataset.windowsTotal = String(p.windows_total || 0);
    $("progress-text").textContent = progressText(current, p);
  }

  function poll(current) {
    fetch("/api/progress?job=" + current.id).then(function (r) { return r.json(); })
      .then(function (p) { showProgress(current, p); })
      .catch(function () { /* the next poll tries again */ })
      .finally(function () {
        if (job === current) { current.timer = window.setTimeout(function () { poll(current); }, POLL_MS); }
      });
  }

  function startJob() {
    var current = { id: newJobId(), timer: null, first: null, aborter: new AbortController() };
    job = current;
    var box = $("progress-box"), cancel = $("cancel");
    $("progress").removeAttribute("value");
    $("progress-text").textContent = "sending the photo …";
    box.dataset.state = "receiving";
    box.hidden = false;
    cancel.disabled = false;
    cancel.textContent = "Cancel";
    current.timer = window.setTimeout(function () { poll(current); }, POLL_MS);
    return current;
  }

  function stopJob() {
    if (job) { window.clearTimeout(job.timer); }
    job = null;
    $("progress-box").hidden = true;
  }

  // Cancel: the server stops the prediction at its next window and answers the upload with 409. An
  // upload the server does not hold yet (still being sent) is aborted instead.
  function cancelJob() {
    if (!job) { return; }
    var current = job, cancel = $("cancel");
    cancel.disabled = true;
    cancel.textContent = "Cancelling …";
    $("progress-text").textContent = "cancelling …";
    fetch("/api/cancel?job=" + current.id, { method: "POST" }).then(function (r) {
      if (!r.ok && job === current) { current.aborter.abort(); }
    }).catch(function () { if (job === current) { current.aborter.abort(); } });
  }

  function showCancelled(body) {
    clearResult();
    statusEl.textContent = "Cancelled: " + (body.detail || "the prediction was stopped") +
      ". Nothing was kept; drop a photo to start again.";
  }

  function upload(file) {
    if (!file) { return; }
    if (busy) {
      showBusy();  // never drop a second photo silently
      fileInput.value = "";
      return;
    }
    busy = true;
    clearError();
    clearBusy();
    clearResult();
    statusEl.textContent = "Analysing " + file.name + " …";
    var current = startJob();
    var params = new URLSearchParams({ mode: $("mode").value, job: current.id });
    var thr = $("threshold").value.trim();
    if (thr !== "") { params.set("threshold", thr); }
    fetch("/api/predict?" + params.toString(), {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
      body: file,
      signal: current.aborter.signal
    }).then(function (response) {
      return response.json().catch(function () { return { detail: "HTTP " + response.status }; })
        .then(function (body) {
          if (!response.ok && !body.cancelled) {
            var detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
            throw new Error(detail || ("HTTP " + response.status));
          }
          return body;
        });
    }).then(function (body) {
      if (body.cancelled) { showCancelled(body); } else { show(body); }
    }).catch(function (err) {
      if (err && err.name === "AbortError") { showCancelled({ detail: file.name + ": stopped while sending" }); return; }
      clearResult();
      showError(err.message || String(err));
    }).finally(function () {
      busy = false;
      stopJob();
      clearBusy();
      fileInput.value = "";
    });
  }

  fileInput.addEventListener("change", function () { upload(fileInput.files[0]); });
  opacity.addEventListener("input", applyOpacity);
  $("cancel").addEventListener("click", cancelJob);
  ["dragenter", "dragover"].forEach(function (type) {
    dropZone.addEventListener(type, function (e) { e.preventDefault(); dropZone.classList.add("dragging"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    dropZone.addEventListener(type, function (e) { e.preventDefault(); dropZone.classList.remove("dragging"); });
  });
  dropZone.addEventListener("drop", function (e) {
    var files = e.dataTransfer && e.dataTransfer.files;
    if (files && files.length) { upload(files[0]); }
  });
  dropZone.addEventListener("keydown", function (e) {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });
  // Dropping a file elsewhere on the page must not navigate away from it.
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });

  function showCard(card) {
    var box = $("model-card");
    box.textContent = "";
    if (!card) { box.hidden = true; return; }
    var head = el("p", "", "");
    head.appendChild(el("b", "", "Model card" + (card.title ? ": " + card.title : "")));
    if (card.headline) { head.appendChild(document.createTextNode(" — " + card.headline)); }
    box.appendChild(head);
    var rows = [];
    Object.keys(card).forEach(function (key) {
      var value = card[key];
      if (key === "title" || key === "headline" || value === null) { return; }
      if (typeof value === "object" && !Array.isArray(value)) {
        Object.keys(value).forEach(function (k) {
          if (typeof value[k] !== "object") { rows.push([key + ": " + k, String(value[k])]); }
        });
      } else if (Array.isArray(value)) {
        if (value.length <= 12) { rows.push([key, value.join("; ")]); }
      } else {
        rows.push([key, String(value)]);
      }
    });
    if (rows.length) {
      var dl = el("dl", "facts");
      fillFacts(dl, rows);
      box.appendChild(dl);
    }
    box.hidden = false;
  }

  fetch("/api/info").then(function (r) { return r.json(); }).then(function (info) {
    modelLabel = info.label || info.model;
    var label = $("model-label");
    label.textContent = "Model: " + modelLabel;
    if (/unvalidated|demo model|not a real-photo number/.test(modelLabel)) { label.classList.add("warn"); }
    var parts = ["model " + info.model];
    if (info.checkpoint) { parts.push("checkpoint " + info.checkpoint); }
    parts.push("input " + info.input_size + " px", "threshold " + info.threshold);
    $("model-info").textContent = parts.join(" · ");
    showCard(info.card);
    var facts = [["forgeloc version", info.version]];
    if (info.checkpoint) { facts.push(["checkpoint", info.checkpoint]); }
    facts.push(["weights SHA-256", info.weights_sha256 || "not available (no weights file)"]);
    if (info.cues && info.cues.length) { facts.push(["cues run", info.cues.join(", ")]); }
    if (info.fused && info.fused.length) { facts.push(["fused into the heatmap", info.fused.join(", ")]); }
    fillFacts($("model-facts"), facts);
    $("model-details").hidden = false;
    $("bands").textContent = "Verdict bands: " + info.bands;
    $("limits").textContent = "Up to " + info.max_upload_mb + " MB and " +
      (info.max_pixels / 1e6).toFixed(0) + " megapixels. Mode auto: " + info.auto_rule + ".";
    $("colour-scale").style.background = "linear-gradient(to right, " + info.colormap_stops.join(", ") + ")";
  }).catch(function () { $("model-label").textContent = "model information unavailable"; });
  applyOpacity();
})();
