"""``fast-anerf render --type mesh``: density -> marching cubes -> coloured ``.ply`` (world units) + turntable.

* Grid: over the union of the posed bone boxes (outside it the fast field's density is exactly 0), padded
  by one voxel, ``--mesh-res`` cells along its longest side (cubic voxels). Evaluated in chunks under
  ``no_grad`` with the field's colour-free ``density``.
* Threshold, in opacity terms: the surface is where a slab ``SURFACE_THICKNESS`` x skeleton height thick
  (1 % of the height, ~1.7 cm for an adult) would reach opacity ``--mesh-threshold`` (default 0.5), i.e.
  ``sigma = -ln(1 - opacity) / (0.01 * height)`` per world unit (~40/m for a 1.7 m person at 0.5). This
  does not depend on the grid resolution or on the data's units. (A-NeRF thresholded its raw sigma at 10,
  in its own ~0.6 m units, on a fixed [-1.8, 1.8]^3 grid, and wrote grid-normalised vertices.)
* Marching cubes with PyMCubes; vertices in world units (the posed mesh in the training data's world, up
  = -y; the rest-pose mesh in the skeleton's canonical frame, up = +y, root at the origin). Faces are
  oriented outwards, only the largest connected component is kept (floaters dropped), and each vertex is
  coloured by what a camera looking straight at it sees (a short ray along its inward normal, rendered).
* Turntable: the mesh ray-cast on the CPU with trimesh (embree through embreex), vertex colours times a
  Lambertian headlight; with ``--mesh-renderer pytorch3d`` (or ``auto`` where pytorch3d is importable)
  pytorch3d's rasteriser and Phong shader instead. pytorch3d has no Linux wheel on the package registry, so
  that path could not be run here; it is guarded and the trimesh path is the one that is tested.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from fast_anerf import bone_boxes
from fast_anerf.errors import UserError

SURFACE_THICKNESS = 0.01  # fraction of the skeleton height over which the opacity threshold is reached
VIEW_OFFSET = 0.03  # vertex colours: rays start this far (fraction of the height) outside the surface
AMBIENT = 0.5  # turntable shading: ambient + (1 - ambient) * max(0, n . l)
DENSITY_CHUNK = 65536  # grid points per density call (render --chunk overrides)
COLOUR_CHUNK = 8192  # vertex-colour rays per render call (render --chunk overrides)


def sigma_threshold(opacity: float, height: float, thickness: float = SURFACE_THICKNESS) -> float:
    """Density (per world unit) at which a slab ``thickness * height`` thick reaches ``opacity``."""
    if not 0.0 < opacity < 1.0:
        raise UserError(f"--mesh-threshold {opacity}: expected an opacity strictly between 0 and 1 (e.g. 0.5)")
    return -math.log(1.0 - opacity) / (thickness * height)


def posed_bounds(model, skts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``bone_boxes.posed_bounds`` of the model's boxes posed by ``skts [24, 4, 4]``, on the CPU."""
    return bone_boxes.posed_bounds(skts.cpu().float(), model.box_min.cpu(), model.box_max.cpu())


def _to_local(skts: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """World points ``[N, 3]`` in every joint frame: ``[N, 24, 3]``."""
    return torch.einsum("jab,nb->nja", skts[:, :3, :3], points) + skts[:, :3, 3]


@torch.no_grad()
def density_grid(model, skts: torch.Tensor, res: int, chunk: int = DENSITY_CHUNK):
    """Density on a grid over the posed boxes: ``(sigma [X, Y, Z] float32 numpy, origin [3], voxel size)``.

    ``res`` cells along the longest side; voxel centres at ``origin + index * voxel`` (world units).
    """
    device = model.box_min.device
    lo, hi = posed_bounds(model, skts)
    voxel = float((hi - lo).max()) / res
    lo = lo - voxel  # one empty voxel around the boxes: closed surfaces
    counts = [int(math.ceil(float(e) / voxel)) + 3 for e in (hi - lo)]
    axes = [lo[a] + voxel * torch.arange(counts[a], dtype=torch.float32) for a in range(3)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    skts = skts.to(device).float()
    sigma = torch.cat([model.field.density(_to_local(skts, p.to(device))).cpu() for p in points.split(chunk)])
    return sigma.reshape(*counts).numpy().astype(np.float32), lo.numpy(), voxel


@torch.no_grad()
def vertex_colours(
    model,
    skts: torch.Tensor,
    vertices: np.ndarray,
    normals: np.ndarray,
    code_id: int = -1,
    settings=None,
    chunk: int = COLOUR_CHUNK,
) -> np.ndarray:
    """Colour of each vertex as a camera looking straight at it sees it: a ray from ``VIEW_OFFSET`` x height
    outside the vertex along ``-normal``, volume-rendered with ``renderer.render_rays`` and un-composited from
    its (black) background. Sampling the colour MLP exactly at the iso-surface instead gives the colour of
    the semi-transparent fringe, which is mostly untrained (washed-out colours).

    Args: ``vertices [V, 3]`` world, ``normals [V, 3]`` outward unit normals. Returns uint8 ``[V, 3]``.
    """
    from fast_anerf.renderer import RenderSettings, render_rays

    device = model.box_min.device
    skts = skts.to(device).float()
    settings = settings or RenderSettings()
    black = torch.zeros(3, device=device)
    out = []
    for sl in range(0, len(vertices), chunk):
        n = torch.tensor(np.array(normals[sl : sl + chunk], np.float32), device=device)
        x = torch.tensor(np.array(vertices[sl : sl + chunk], np.float32), device=device)
        codes = torch.full((len(x),), code_id, dtype=torch.long, device=device)
        result = render_rays(model, x + VIEW_OFFSET * model.height * n, -n, skts, codes, black, settings)
        out.append((result["rgb"] / result["acc"].clamp_min(1e-3)[:, None]).clamp(0, 1).cpu())
    return np.round(torch.cat(out).numpy() * 255).astype(np.uint8)


def extract_mesh(model, skts: torch.Tensor, res: int = 128, opacity: float = 0.5, code_id: int = -1, settings=None,
                 chunk: int | None = None):  # fmt: skip
    """Marching cubes of the density of ``model`` posed by ``skts [24, 4, 4]``; ``chunk`` (render's ``--chunk``):
    grid points per density call and rays per colour call, default ``DENSITY_CHUNK`` and ``COLOUR_CHUNK``.

    Returns ``(mesh, stats)``: a coloured ``trimesh.Trimesh`` in world units (largest component only, faces
    outwards) and ``stats`` with ``threshold`` (sigma), ``components`` (before filtering),
    ``largest_fraction`` (share of the vertices in the kept component), ``vertices``, ``faces``.
    """
    import mcubes
    import trimesh

    sigma, origin, voxel = density_grid(model, skts, res, chunk or DENSITY_CHUNK)
    threshold = sigma_threshold(opacity, model.height)
    if not (sigma > threshold).any():
        coarse = f", or a finer --mesh-res (cells this size can miss the body: {res})" if res < 32 else ""
        raise UserError(
            f"no surface: the density never reaches {threshold:.1f}/unit (opacity {opacity}); lower --mesh-threshold "
            f"or train longer{coarse}"
        )
    verts, faces = mcubes.marching_cubes(sigma, threshold)
    mesh = trimesh.Trimesh(origin + verts * voxel, faces.astype(np.int64), process=True)
    parts = mesh.split(only_watertight=False)
    largest = max(parts, key=lambda m: len(m.vertices)) if len(parts) else mesh
    stats = {
        "threshold": threshold,
        "voxel": voxel,
        "grid": list(sigma.shape),
        "components": len(parts),
        "largest_fraction": len(largest.vertices) / max(len(mesh.vertices), 1),
    }
    mesh = largest
    if mesh.volume < 0:  # marching-cubes winding depends on the sign convention: make normals point out
        mesh.invert()
    colours = vertex_colours(model, skts, mesh.vertices, mesh.vertex_normals, code_id, settings, chunk or COLOUR_CHUNK)
    mesh.visual.vertex_colors = colours
    stats.update(vertices=len(mesh.vertices), faces=len(mesh.faces))
    return mesh, stats


# ---------------------------------------------------------------------------------------------
# Turntable
# ---------------------------------------------------------------------------------------------
def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world ``[4, 4]`` at ``eye`` looking at ``target`` with ``up`` up in the image."""
    z = eye - target
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    x = x / np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def turntable_cameras(mesh, n: int, size: int, up: np.ndarray, front: np.ndarray, elevation_deg: float = 10.0):
    """``n`` cameras ``[n, 4, 4]`` circling the mesh about ``up`` (starting on the ``front`` side, a little
    above), and the focal length (pixels) that fits the whole mesh in a ``size x size`` image."""
    up = up / np.linalg.norm(up)
    front = front - up * (front @ up)
    front = front / np.linalg.norm(front)
    side = np.cross(up, front)
    lo, hi = mesh.bounds
    target, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2
    half_fov = math.radians(20.0)
    focal = size / 2 / math.tan(half_fov)
    distance = radius / math.sin(half_fov)
    e = math.radians(elevation_deg)
    cams = []
    for k in range(n):
        a = 2 * math.pi * k / n
        direction = math.cos(e) * (math.cos(a) * front + math.sin(a) * side) + math.sin(e) * up
        cams.append(look_at(target + distance * direction, target, up))
    return np.stack(cams), focal


def raycast_frame(mesh, c2w: np.ndarray, focal: float, size: int, up: np.ndarray) -> np.ndarray:
    """One shaded view (uint8 ``[size, size, 3]``, white background) by CPU ray casting with trimesh."""
    import trimesh

    from fast_anerf.data.rays import image_rays

    rays_o, rays_d = image_rays(torch.as_tensor(c2w), focal, (size / 2, size / 2), size, size)
    rays_o, rays_d = rays_o.numpy(), rays_d.numpy()
    tri, ray, loc = mesh.ray.intersects_id(rays_o, rays_d, multiple_hits=False, return_locations=True)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], loc)  # [hits, 3]
    corners = mesh.faces[tri]
    normal = np.einsum("hk,hkc->hc", bary, mesh.vertex_normals[corners])
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True).clip(1e-9)
    colour = np.einsum("hk,hkc->hc", bary, mesh.visual.vertex_colors[corners][..., :3] / 255.0)
    to_eye = -rays_d[ray] / np.linalg.norm(rays_d[ray], axis=-1, keepdims=True)
    light = to_eye + 0.5 * up / np.linalg.norm(up)  # a headlight raised a little: the shape reads better
    light /= np.linalg.norm(light, axis=-1, keepdims=True)
    shade = AMBIENT + (1 - AMBIENT) * np.clip((normal * light).sum(-1), 0, 1)
    rgb = np.ones((size * size, 3))
    rgb[ray] = colour * shade[:, None]
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8).reshape(size, size, 3)


def pytorch3d_frames(mesh, cams: np.ndarray, focal: float, size: int) -> list[np.ndarray]:
    """The turntable with pytorch3d (rasteriser + Phong shading, point light at the camera).

    Camera conversion: pytorch3d's view frame is x left, y up, z forward and it multiplies row vectors
    (``X_view = X_world R + T``); ours is OpenGL (x right, y up, -z forward). With ``flip = diag(-1, 1, -1)``:
    ``R = R_c2w flip``, ``T = -flip R_c2w^T t``. Not run here (pytorch3d is not installable on this machine).
    """
    import pytorch3d.renderer as p3r
    from pytorch3d.structures import Meshes

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    verts = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64, device=device)
    colours = torch.as_tensor(mesh.visual.vertex_colors[:, :3] / 255.0, dtype=torch.float32, device=device)
    meshes = Meshes([verts], [faces], textures=p3r.TexturesVertex([colours]))
    fov = math.degrees(2 * math.atan(size / 2 / focal))
    flip = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    raster = p3r.RasterizationSettings(image_size=size, blur_radius=0.0, faces_per_pixel=1)
    frames = []
    for c2w in cams:
        rot = torch.as_tensor(c2w[:3, :3], dtype=torch.float32)
        eye = torch.as_tensor(c2w[:3, 3], dtype=torch.float32)
        cameras = p3r.FoVPerspectiveCameras(
            device=device, R=(rot @ flip)[None], T=(-(flip @ rot.T @ eye))[None], fov=fov
        )
        lights = p3r.PointLights(device=device, location=eye[None])
        shader = p3r.HardPhongShader(device=device, cameras=cameras, lights=lights,
                                     blend_params=p3r.BlendParams(background_color=(1.0, 1.0, 1.0)))  # fmt: skip
        renderer = p3r.MeshRenderer(p3r.MeshRasterizer(cameras=cameras, raster_settings=raster), shader)
        image = renderer(meshes)[0, ..., :3].clamp(0, 1).cpu().numpy()
        frames.append(np.round(image * 255).astype(np.uint8))
    return frames


def pick_mesh_renderer(name: str) -> str:
    """``trimesh`` or ``pytorch3d`` for ``--mesh-renderer`` (``auto``: pytorch3d when importable)."""
    try:
        import pytorch3d.renderer  # noqa: F401

        available = True
    except Exception:  # ImportError, or a broken build's OSError
        available = False
    if name == "pytorch3d" and not available:
        raise UserError("--mesh-renderer pytorch3d: pytorch3d is not importable here; use trimesh (or auto)")
    return "pytorch3d" if name == "pytorch3d" or (name == "auto" and available) else "trimesh"


# ---------------------------------------------------------------------------------------------
# The command's mesh branch (called by render.run_render)
# ---------------------------------------------------------------------------------------------
@dataclass
class MeshJob:
    names: list[str]  # output stems
    skts: list[torch.Tensor]  # [24, 4, 4] each
    codes: list[int]
    up: np.ndarray  # world up of the meshes
    fronts: list[np.ndarray]  # where the turntable starts (towards the training camera)
    renderer: str


def plan_mesh(scene, args) -> MeshJob:
    """Which poses to mesh: ``--rest`` (canonical frame) or the chosen training frames (default frame 0)."""
    from fast_anerf.render_inputs import pose_to_skts

    sigma_threshold(args.mesh_threshold, scene.model.height)  # validate before any work
    renderer = pick_mesh_renderer(args.mesh_renderer)
    if args.rest and args.frames:
        raise UserError("--rest meshes the rest pose, not --frames; drop one of them")
    if args.rest:
        rest = scene.model.rest_pose.cpu()
        skts = pose_to_skts(rest, torch.eye(3).expand(24, 3, 3), torch.zeros(3))
        return MeshJob(["mesh_rest"], [skts], [-1], np.array([0.0, 1.0, 0.0]), [np.array([0, 0, 1.0])], renderer)
    frames = scene.check_frames(args.frames or (0,))
    fronts = [scene.data.arrays["c2ws"][i][:3, 3] - scene.image_skts(i).inverse()[0, :3, 3].numpy() for i in frames]
    skts = [scene.image_skts(i) for i in frames]
    names = [f"mesh_{i:05d}" for i in frames]
    return MeshJob(names, skts, [scene.code(i) for i in frames], np.array([0.0, -1.0, 0.0]), fronts, renderer)


def run_mesh(scene, job: MeshJob, args, out) -> dict:
    """Write ``<name>.ply`` per pose and a turntable of the first (frames/, video.mp4, video.gif) into out.tmp."""
    from fast_anerf.media import progress_bar, write_png, write_videos

    size = args.res[0] if args.res is not None else 256
    meshes, stats = [], {}
    for name, skts, code in zip(job.names, job.skts, job.codes, strict=True):
        start = time.perf_counter()
        mesh, stats[name] = extract_mesh(scene.model, skts, args.mesh_res, args.mesh_threshold, code, scene.settings,
                                         args.chunk)  # fmt: skip
        mesh.export(out.tmp / f"{name}.ply")
        stats[name]["seconds"] = time.perf_counter() - start
        print(
            f"{name}.ply: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, grid {stats[name]['grid']}, "
            f"largest component {100 * stats[name]['largest_fraction']:.1f}% of {stats[name]['components']}"
        )
        meshes.append(mesh)
    cams, focal = turntable_cameras(meshes[0], args.n_views, size, job.up, job.fronts[0])
    start = time.perf_counter()
    if job.renderer == "pytorch3d":
        frames = pytorch3d_frames(meshes[0], cams, focal, size)
    else:
        frames = []
        with progress_bar() as bar:
            task = bar.add_task("turntable (trimesh)", total=len(cams), info="")
            for c2w in cams:
                frames.append(raycast_frame(meshes[0], c2w, focal, size, job.up))
                bar.update(task, advance=1)
    for k, frame in enumerate(frames):
        write_png(out.tmp / "frames" / f"{k:05d}.png", frame)
    seconds = time.perf_counter() - start
    videos = write_videos(frames, out.tmp, "video", args.fps)
    return {
        "frames": len(frames),
        "resolution": [size, size],
        "seconds": seconds,
        "seconds_per_frame": seconds / len(frames),
        "renderer": job.renderer,
        "meshes": stats,
        "outputs": [f"{n}.ply" for n in job.names] + ["frames/"] + [p.name for p in videos],
    }
