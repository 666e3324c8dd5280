/* The two transforms of Winograd's F(4x4, 3x3) (Lavin & Gray 2016), each one pass over memory.
 *
 * input_transform:  x [N, C, H, W] -> V [36, N*T, C], V[6i+j, tile, c] = (B^T d B)[i, j] where d is
 *                   the 6x6 block of channel c starting at (4*ty - 1, 4*tx - 1), zero outside the map.
 * output_transform: M [36, N*T, C] -> y [N, C, H, W], the 4x4 block (A^T m A) + bias at (4*ty, 4*tx).
 *
 * T = th * tw tiles per image, tile = n*T + ty*tw + tx. Work is split by (n, ty) into [start, end)
 * so that callers can run parts on several threads. Channels go LANES at a time through arrays
 * whose last axis is the lane, which the compiler turns into vector arithmetic.
 * Compiled by t2i/kernels/winograd.py on first use.
 */
#define LANES 8

/* o = B^T d for one column of six values (per lane) */
static void bt(const float d[6][LANES], float o[6][LANES]) {
    for (int l = 0; l < LANES; l++) {
        o[0][l] = 4.f * d[0][l] - 5.f * d[2][l] + d[4][l];
        o[1][l] = -4.f * (d[1][l] + d[2][l]) + d[3][l] + d[4][l];
        o[2][l] = 4.f * (d[1][l] - d[2][l]) - d[3][l] + d[4][l];
        o[3][l] = 2.f * (d[3][l] - d[1][l]) - d[2][l] + d[4][l];
        o[4][l] = 2.f * (d[1][l] - d[3][l]) - d[2][l] + d[4][l];
        o[5][l] = 4.f * d[1][l] - 5.f * d[3][l] + d[5][l];
    }
}

/* o = A^T m for one column of six values (per lane) */
static void at(const float m[6][LANES], float o[4][LANES]) {
    for (int l = 0; l < LANES; l++) {
        float s12 = m[1][l] + m[2][l], d12 = m[1][l] - m[2][l];
        float s34 = m[3][l] + m[4][l], d34 = m[3][l] - m[4][l];
        o[0][l] = m[0][l] + s12 + s34;
        o[1][l] = d12 + 2.f * d34;
        o[2][l] = s12 + 4.f * s34;
        o[3][l] = d12 + 8.f * d34 + m[5][l];
    }
}

void input_transform(const float *x, float *V, long N, long C, long H, long W, long th, long tw, long start,
                     long end) {
    long NT = N * th * tw;
    for (long u = start; u < end; u++) {
        long ty = u % th, n = u / th;
        for (long tx = 0; tx < tw; tx++) {
            long tile = (n * th + ty) * tw + tx;
            for (long c0 = 0; c0 < C; c0 += LANES) {
                int lanes = C - c0 < LANES ? (int)(C - c0) : LANES;
                float d[6][6][LANES], rows[6][6][LANES], column[6][LANES], out[6][LANES];
                for (int l = 0; l < LANES; l++) {
                    const float *plane = x + (n * C + c0 + l) * H * W;
                    for (int a = 0; a < 6; a++) {
                        long r = 4 * ty - 1 + a;
                        int row_inside = l < lanes && r >= 0 && r < H;
                        for (int b = 0; b < 6; b++) {
                            long c = 4 * tx - 1 + b;
                            d[a][b][l] = row_inside && c >= 0 && c < W ? plane[r * W + c] : 0.f;
                        }
                    }
                }
                for (int b = 0; b < 6; b++) { /* B^T d, a column at a time */
                    for (int a = 0; a < 6; a++)
                        for (int l = 0; l < LANES; l++) column[a][l] = d[a][b][l];
                    bt(column, out);
                    for (int i = 0; i < 6; i++)
                        for (int l = 0; l < LANES; l++) rows[i][b][l] = out[i][l];
                }
                for (int i = 0; i < 6; i++) { /* (B^T d) B, a row at a time */
                    bt(rows[i], out);
                    for (int j = 0; j < 6; j++) {
                        float *dst = V + ((long)(6 * i + j) * NT + tile) * C + c0;
                        for (int l = 0; l < lanes; l++) dst[l] = out[j][l];
                    }
                }
            }
        }
    }
}

void output_transform(const float *M, const float *bias, float *y, long N, long C, long H, long W, long th,
                      long tw, long start, long end) {
    long NT = N * th * tw;
    for (long u = start; u < end; u++) {
        long ty = u % th, n = u / th;
        for (long tx = 0; tx < tw; tx++) {
            long tile = (n * th + ty) * tw + tx;
            for (long c0 = 0; c0 < C; c0 += LANES) {
                int lanes = C - c0 < LANES ? (int)(C - c0) : LANES;
                float m[6][6][LANES], rows[4][6][LANES], column[6][LANES], out[4][LANES], block[4][4][LANES];
                for (int k = 0; k < 36; k++) {
                    const float *src = M + ((long)k * NT + tile) * C + c0;
                    for (int l = 0; l < LANES; l++) m[k / 6][k % 6][l] = l < lanes ? src[l] : 0.f;
                }
                for (int j = 0; j < 6; j++) { /* A^T m, a column at a time */
                    for (int i = 0; i < 6; i++)
                        for (int l = 0; l < LANES; l++) column[i][l] = m[i][j][l];
                    at(column, out);
                    for (int p = 0; p < 4; p++)
                        for (int l = 0; l < LANES; l++) rows[p][j][l] = out[p][l];
                }
                for (int p = 0; p < 4; p++) { /* (A^T m) A, a row at a time */
                    at(rows[p], out);
                    for (int q = 0; q < 4; q++)
                        for (int l = 0; l < LANES; l++) block[p][q][l] = out[q][l];
                }
                for (int l = 0; l < lanes; l++) {
                    float *plane = y + (n * C + c0 + l) * H * W, b = bias ? bias[c0 + l] : 0.f;
                    for (int p = 0; p < 4 && 4 * ty + p < H; p++)
                        for (int q = 0; q < 4 && 4 * tx + q < W; q++)
                            plane[(4 * ty + p) * W + 4 * tx + q] = block[p][q][l] + b;
                }
            }
        }
    }
}
