// Bicubic enlargement (Keys' cubic, a = -0.5), separable, for the "before" half of a
// comparison: what plain interpolation makes of the model's input.

function cubic(x) {
  const a = -0.5;
  x = Math.abs(x);
  if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

function taps(inSize, outSize) {
  const scale = inSize / outSize;
  const index = new Int32Array(outSize * 4);
  const weight = new Float32Array(outSize * 4);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale - 0.5;
    const left = Math.floor(center) - 1;
    let total = 0;
    for (let k = 0; k < 4; k++) {
      const w = cubic(center - (left + k));
      index[o * 4 + k] = Math.min(Math.max(left + k, 0), inSize - 1);
      weight[o * 4 + k] = w;
      total += w;
    }
    for (let k = 0; k < 4; k++) weight[o * 4 + k] /= total;
  }
  return { index, weight };
}

export function bicubic(bitmap, width, height) {
  const source = document.createElement("canvas");
  source.width = bitmap.width;
  source.height = bitmap.height;
  const sourceContext = source.getContext("2d");
  sourceContext.drawImage(bitmap, 0, 0);
  const pixels = sourceContext.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const inWidth = bitmap.width;
  const inHeight = bitmap.height;
  const across = taps(inWidth, width);
  const down = taps(inHeight, height);
  const rows = new Float32Array(inHeight * width * 3); // horizontal pass
  for (let y = 0; y < inHeight; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < 4; k++) {
        const i = (y * inWidth + across.index[x * 4 + k]) * 4;
        const w = across.weight[x * 4 + k];
        r += pixels[i] * w;
        g += pixels[i + 1] * w;
        b += pixels[i + 2] * w;
      }
      const o = (y * width + x) * 3;
      rows[o] = r;
      rows[o + 1] = g;
      rows[o + 2] = b;
    }
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let y = 0; y < height; y++) { // vertical pass
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < 4; k++) {
        const i = (down.index[y * 4 + k] * width + x) * 3;
        const w = down.weight[y * 4 + k];
        r += rows[i] * w;
        g += rows[i + 1] * w;
        b += rows[i + 2] * w;
      }
      const o = (y * width + x) * 4;
      image.data[o] = r; // Uint8ClampedArray rounds and clamps
      image.data[o + 1] = g;
      image.data[o + 2] = b;
      image.data[o + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
  return canvas;
}
