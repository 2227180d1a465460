// tfsym3d viewer: the canonical surface of one reconstruction, drawn by a small
// software rasteriser on a 2D canvas (no WebGL, so it renders the same in any
// browser, headless included, and opens from the file system).
//
// Shading is the model's (docs/method.md §4): ambient + diffuse * max(0, n . l)
// with n the normals of the depth map by central differences (border (0, 0, 1))
// and l = normalize([lx, ly, 1]) in the camera frame (docs/method.md §2). The
// light stays in the camera frame while the surface turns, so at yaw = pitch = 0
// the picture is model.shade's canonical image.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("tfsym3d-data").textContent);
  var S = data.size, F = data.focal, C = data.principal, RC = data.rot_center_depth;

  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  // Depth: uint16 little-endian, depth_min -> 0, depth_max -> 65535.
  var raw = bytes(data.depth_uint16), depth = new Float32Array(S * S);
  for (var i = 0; i < S * S; i++) {
    var q = raw[2 * i] | (raw[2 * i + 1] << 8);
    depth[i] = data.depth_min + q / 65535 * (data.depth_max - data.depth_min);
  }
  var albedo = bytes(data.albedo_rgb);  // uint8 RGB, S * S * 3

  // Camera-space points P = d K^-1 [u, v, 1] and the model's normals.
  var P = new Float32Array(S * S * 3), N = new Float32Array(S * S * 3);
  for (var v = 0; v < S; v++) for (var u = 0; u < S; u++) {
    var k = v * S + u, d = depth[k];
    P[3 * k] = d * (u - C) / F; P[3 * k + 1] = d * (v - C) / F; P[3 * k + 2] = d;
  }
  for (v = 0; v < S; v++) for (u = 0; u < S; u++) {
    k = v * S + u;
    if (u === 0 || v === 0 || u === S - 1 || v === S - 1) {
      N[3 * k] = 0; N[3 * k + 1] = 0; N[3 * k + 2] = 1; continue;
    }
    var r = 3 * (k + 1), l = 3 * (k - 1), dn = 3 * (k + S), up = 3 * (k - S);
    var ax = P[r] - P[l], ay = P[r + 1] - P[l + 1], az = P[r + 2] - P[l + 2];
    var bx = P[dn] - P[up], by = P[dn + 1] - P[up + 1], bz = P[dn + 2] - P[up + 2];
    var nx = ay * bz - az * by, ny = az * bx - ax * bz, nz = ax * by - ay * bx;
    var len = Math.sqrt(nx * nx + ny * ny + nz * nz) + 1e-7;
    N[3 * k] = nx / len; N[3 * k + 1] = ny / len; N[3 * k + 2] = nz / len;
  }

  var state = {yaw: 0, pitch: 0, lx: data.light.lx, ly: data.light.ly,
               ambient: data.light.ambient, diffuse: data.light.diffuse,
               mode: "textured"};
  var MODES = ["textured", "albedo", "normals", "shape"];

  function readHash() {
    var h = location.hash.replace(/^#/, "");
    if (!h) return;
    h.split("&").forEach(function (item) {
      var kv = item.split("="), key = kv[0], val = decodeURIComponent(kv[1] || "");
      var num = parseFloat(val);
      if (key === "light") {
        var xs = val.split(",").map(parseFloat);
        if (xs.length === 3 && xs[2] > 0) { xs = [xs[0] / xs[2], xs[1] / xs[2]]; }
        if (xs.length >= 2 && isFinite(xs[0]) && isFinite(xs[1])) {
          state.lx = xs[0]; state.ly = xs[1];
        }
      } else if ((key === "yaw" || key === "pitch") && isFinite(num)) {
        state[key] = Math.max(-90, Math.min(90, num));
      } else if ((key === "ambient" || key === "diffuse") && isFinite(num)) {
        state[key] = Math.max(0, Math.min(1, num));
      } else if (key === "mode" && MODES.indexOf(val) >= 0) {
        state.mode = val;
      }
    });
  }
  function writeHash() {
    var h = "light=" + state.lx.toFixed(3) + "," + state.ly.toFixed(3) +
        "&yaw=" + state.yaw.toFixed(1) + "&pitch=" + state.pitch.toFixed(1) +
        "&ambient=" + state.ambient.toFixed(2) + "&diffuse=" + state.diffuse.toFixed(2) +
        "&mode=" + state.mode;
    try { history.replaceState(null, "", "#" + h); } catch (e) { /* file: in some browsers */ }
  }

  var canvas = document.getElementById("surface");
  var scale = Math.max(1, Math.round(data.display / S));
  canvas.width = canvas.height = S * scale;
  var ctx = canvas.getContext("2d");
  var W = canvas.width, image = ctx.createImageData(W, W);
  var zbuf = new Float32Array(W * W);
  var X = new Float32Array(S * S), Y = new Float32Array(S * S), Z = new Float32Array(S * S);
  var RN = new Float32Array(S * S * 3);

  function draw() {
    var yaw = state.yaw * Math.PI / 180, pitch = state.pitch * Math.PI / 180;
    var cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    // R = Ry(yaw) Rx(pitch), about the rotation centre (0, 0, RC).
    var m = [cy, sy * sp, sy * cp, 0, cp, -sp, -sy, cy * sp, cy * cp];
    for (var k = 0; k < S * S; k++) {
      var x = P[3 * k], y = P[3 * k + 1], z = P[3 * k + 2] - RC;
      var X3 = m[0] * x + m[1] * y + m[2] * z, Y3 = m[3] * x + m[4] * y + m[5] * z;
      var Z3 = m[6] * x + m[7] * y + m[8] * z + RC;
      X[k] = (F * X3 / Z3 + C + 0.5) * scale; Y[k] = (F * Y3 / Z3 + C + 0.5) * scale;
      Z[k] = Z3;
      var a = N[3 * k], b = N[3 * k + 1], c = N[3 * k + 2];
      RN[3 * k] = m[0] * a + m[1] * b + m[2] * c;
      RN[3 * k + 1] = m[3] * a + m[4] * b + m[5] * c;
      RN[3 * k + 2] = m[6] * a + m[7] * b + m[8] * c;
    }
    var px = image.data;
    for (var i = 0; i < W * W; i++) {
      zbuf[i] = Infinity; px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = 32; px[4 * i + 3] = 255;
    }
    var ln = Math.sqrt(state.lx * state.lx + state.ly * state.ly + 1);
    var L = [state.lx / ln, state.ly / ln, 1 / ln];
    for (var v = 0; v < S - 1; v++) for (var u = 0; u < S - 1; u++) {
      var k00 = v * S + u, k01 = k00 + 1, k10 = k00 + S, k11 = k10 + 1;
      triangle(k00, k01, k10, L); triangle(k01, k11, k10, L);
    }
    ctx.putImageData(image, 0, 0);
  }

  function triangle(a, b, c, L) {
    var ax = X[a], ay = Y[a], bx = X[b], by = Y[b], cx = X[c], cy = Y[c];
    var area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax);
    if (Math.abs(area) < 1e-9) return;
    var x0 = Math.max(0, Math.floor(Math.min(ax, bx, cx))),
        x1 = Math.min(W - 1, Math.ceil(Math.max(ax, bx, cx)));
    var y0 = Math.max(0, Math.floor(Math.min(ay, by, cy))),
        y1 = Math.min(W - 1, Math.ceil(Math.max(ay, by, cy)));
    var px = image.data, mode = state.mode;
    for (var y = y0; y <= y1; y++) for (var x = x0; x <= x1; x++) {
      var sx = x + 0.5, sy = y + 0.5;
      var wa = ((bx - sx) * (cy - sy) - (by - sy) * (cx - sx)) / area;
      var wb = ((cx - sx) * (ay - sy) - (cy - sy) * (ax - sx)) / area;
      var wc = 1 - wa - wb;
      if (wa < -1e-6 || wb < -1e-6 || wc < -1e-6) continue;
      var z = wa * Z[a] + wb * Z[b] + wc * Z[c], p = y * W + x;
      if (z >= zbuf[p]) continue;
      zbuf[p] = z;
      var nx = wa * RN[3 * a] + wb * RN[3 * b] + wc * RN[3 * c];
      var ny = wa * RN[3 * a + 1] + wb * RN[3 * b + 1] + wc * RN[3 * c + 1];
      var nz = wa * RN[3 * a + 2] + wb * RN[3 * b + 2] + wc * RN[3 * c + 2];
      var nl = Math.sqrt(nx * nx + ny * ny + nz * nz) || 1;
      nx /= nl; ny /= nl; nz /= nl;
      var r, g, bl;
      if (mode === "normals") {
        r = (nx + 1) / 2; g = (ny + 1) / 2; bl = (nz + 1) / 2;
      } else {
        var alb = [0, 0, 0];
        for (var ch = 0; ch < 3; ch++) {
          alb[ch] = (wa * albedo[3 * a + ch] + wb * albedo[3 * b + ch] +
                     wc * albedo[3 * c + ch]) / 255;
        }
        if (mode === "albedo") {
          r = alb[0]; g = alb[1]; bl = alb[2];
        } else {
          var shading = state.ambient + state.diffuse *
              Math.max(0, nx * L[0] + ny * L[1] + nz * L[2]);
          if (mode === "shape") { r = g = bl = 0.5 * shading; }
          else { r = alb[0] * shading; g = alb[1] * shading; bl = alb[2] * shading; }
        }
      }
      px[4 * p] = Math.round(255 * Math.min(1, Math.max(0, r)));
      px[4 * p + 1] = Math.round(255 * Math.min(1, Math.max(0, g)));
      px[4 * p + 2] = Math.round(255 * Math.min(1, Math.max(0, bl)));
    }
  }

  // Light pad: the dot shows where the light comes from as seen in the
  // picture (lx = -1 lights the right side, ly = -1 the bottom), so the
  // model's (lx, ly) is minus the dot's offset, PAD_RANGE at the rim.
  var PAD_RANGE = 1.5;
  var pad = document.getElementById("lightpad"), pctx = pad.getContext("2d");
  function drawPad() {
    var w = pad.width, h = w / 2;
    pctx.clearRect(0, 0, w, w);
    pctx.fillStyle = "#333"; pctx.beginPath(); pctx.arc(h, h, h - 1, 0, 2 * Math.PI); pctx.fill();
    pctx.strokeStyle = "#666"; pctx.beginPath();
    pctx.moveTo(h, 0); pctx.lineTo(h, w); pctx.moveTo(0, h); pctx.lineTo(w, h); pctx.stroke();
    var dx = Math.max(-1, Math.min(1, -state.lx / PAD_RANGE)),
        dy = Math.max(-1, Math.min(1, -state.ly / PAD_RANGE));
    pctx.fillStyle = "#fd4"; pctx.beginPath();
    pctx.arc(h + dx * (h - 6), h + dy * (h - 6), 6, 0, 2 * Math.PI); pctx.fill();
  }
  function dragOn(el, onMove) {
    var active = false;
    function at(e) { var b = el.getBoundingClientRect(); onMove(e.clientX - b.left, e.clientY - b.top, e); }
    el.addEventListener("pointerdown", function (e) {
      active = true; el.setPointerCapture(e.pointerId); at(e); e.preventDefault();
    });
    el.addEventListener("pointermove", function (e) { if (active) at(e); });
    el.addEventListener("pointerup", function () { active = false; });
    el.addEventListener("pointercancel", function () { active = false; });
  }
  dragOn(pad, function (x, y) {
    var h = pad.getBoundingClientRect().width / 2;
    state.lx = -PAD_RANGE * Math.max(-1, Math.min(1, (x - h) / (h - 6)));
    state.ly = -PAD_RANGE * Math.max(-1, Math.min(1, (y - h) / (h - 6)));
    update();
  });
  var last = null;
  dragOn(canvas, function (x, y, e) {
    if (e.type === "pointerdown" || !last) { last = [x, y]; return; }
    state.yaw = Math.max(-90, Math.min(90, state.yaw + (x - last[0]) * 0.5));
    state.pitch = Math.max(-90, Math.min(90, state.pitch - (y - last[1]) * 0.5));
    last = [x, y];
    update();
  });
  canvas.addEventListener("pointerup", function () { last = null; });

  var controls = {ambient: document.getElementById("ambient"),
                  diffuse: document.getElementById("diffuse")};
  Object.keys(controls).forEach(function (key) {
    controls[key].addEventListener("input", function () {
      state[key] = parseFloat(controls[key].value); update();
    });
  });
  MODES.forEach(function (mode) {
    document.getElementById("mode-" + mode).addEventListener("change", function () {
      state.mode = mode; update();
    });
  });
  document.getElementById("reset").addEventListener("click", function () {
    state.yaw = state.pitch = 0; state.lx = data.light.lx; state.ly = data.light.ly;
    state.ambient = data.light.ambient; state.diffuse = data.light.diffuse; update();
  });

  var pending = false;
  function update() {
    syncControls(); writeHash();
    if (!pending) {
      pending = true;
      requestAnimationFrame(function () { pending = false; draw(); drawPad(); });
    }
  }
  function syncControls() {
    controls.ambient.value = state.ambient; controls.diffuse.value = state.diffuse;
    document.getElementById("mode-" + state.mode).checked = true;
    document.getElementById("readout").textContent =
        "light (lx, ly) = (" + state.lx.toFixed(2) + ", " + state.ly.toFixed(2) + ")  yaw " +
        state.yaw.toFixed(0) + "\u00b0  pitch " + state.pitch.toFixed(0) + "\u00b0";
  }
  window.addEventListener("hashchange", function () { readHash(); syncControls(); draw(); drawPad(); });

  readHash(); syncControls();
  // The first picture is drawn at once (not on an animation frame), so a
  // screenshot taken right after load shows the state the URL asked for.
  draw(); drawPad();
  document.body.setAttribute("data-ready", "1");
})();
