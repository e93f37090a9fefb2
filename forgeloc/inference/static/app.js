// forgeloc web page: upload a photo, show the verdict, the heatmap over it and one panel per cue.
// No libraries, works offline; every text from the server is set with textContent (never as HTML).
"use strict";

(function () {
  var $ = function (id) { return document.getElementById(id); };
  var dropZone = $("drop-zone"), fileInput = $("file-input"), statusEl = $("status"), errorEl = $("error");
  var busyEl = $("busy"), resultEl = $("result"), opacity = $("opacity"), layer = $("overlay-layer");
  var BUSY_MESSAGE = "busy: one prediction at a time; try again when it finishes";
  var VERDICT_CLASSES = ["v-clear", "v-inconclusive", "v-likely", "v-uncalibrated"];
  var busy = false;
  var modelLabel = "";

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
    var params = new URLSearchParams({ mode: $("mode").value });
    var thr = $("threshold").value.trim();
    if (thr !== "") { params.set("threshold", thr); }
    fetch("/api/predict?" + params.toString(), {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
      body: file
    }).then(function (response) {
      return response.json().catch(function () { return { detail: "HTTP " + response.status }; })
        .then(function (body) {
          if (!response.ok) {
            var detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
            throw new Error(detail || ("HTTP " + response.status));
          }
          return body;
        });
    }).then(show).catch(function (err) {
      clearResult();
      showError(err.message || String(err));
    }).finally(function () {
      busy = false;
      clearBusy();
      fileInput.value = "";
    });
  }

  fileInput.addEventListener("change", function () { upload(fileInput.files[0]); });
  opacity.addEventListener("input", applyOpacity);
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
    if (/unvalidated|demo model/.test(modelLabel)) { label.classList.add("warn"); }
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
